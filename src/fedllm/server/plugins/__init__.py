"""Server halves of the built-in algorithms, one file each."""
