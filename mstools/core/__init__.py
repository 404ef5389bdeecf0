"""Core: hook names, time, file formats and errors. Imports nothing else of mstools."""
