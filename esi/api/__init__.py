"""The HTTP API through which 1C sends requests and reads their outcome."""
