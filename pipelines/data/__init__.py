"""One module per on-disk dataset layout; each validates the layout and returns an MSD-style datalist."""
