"""The thin Click layer: parse options, call the engine, render, write files."""
