"""The ``stabilitybench`` console entry point: a thin dispatcher over the packages."""
