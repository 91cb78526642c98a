"""The Gaussian-process route to P(f) for input sets too large to count functions on.

kernels.py   analytic NNGP kernel (FCN, relu/erf) and the Monte-Carlo empirical kernel (any spec)
ep.py        expectation propagation for log P(sign z = f), z ~ N(0, K); importance-sampling correction
posterior.py P(U) of a training set, predictions off it, generalization error, PAC-Bayes bound
estimate.py  ``log_prior(spec, labels, ...)``: the entry point used by the CLI and the service
store.py     kernels in HDF5 files
"""
