"""Everything between files on disk and the networks: data layouts, synthetic writers, transforms, engines,
inference."""
