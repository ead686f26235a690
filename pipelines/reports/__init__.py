"""Reports written at the end of an evaluation: what a reader of the results looks at."""
