"""Writers of small synthetic data sets in exactly the on-disk layouts of the real ones."""
