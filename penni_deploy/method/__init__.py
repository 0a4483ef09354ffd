"""The PENNI method itself, independent of the compiler: decompose, train, prune, shrink, and count MACs."""
