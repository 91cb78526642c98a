"""The Gaussian-process route to P(f) for input sets too large to count functions on.

kernels.py   analytic NNGP kernel (FCN, CNN with average or no pooling; relu/erf) and the Monte-Carlo empirical kernel (any spec)
ep.py        expectation propagation for log P(sign z = f), z ~ N(0, K); importance-sampling correction
orthant.py   the labelled orthant problem without its degenerate inputs; impossible labellings and why
epsis.py     EP-guided sequential importance sampling (the default Monte-Carlo estimator)
tilting.py   Botev's minimax exponential tilting (the independent second method, and the fallback)
diagnostics.py  standard error, ESS and Pareto k-hat of importance weights
reference.py exact orthant probabilities (equicorrelated kernels, m <= 3) for tests and benchmarks
score.py     ln P(sign z = f) by a chosen method ('auto' default), and many labellings at once
posterior.py P(U) of a training set, predictions off it, generalization error, PAC-Bayes bound
estimate.py  ``log_prior(spec, labels, ...)``, ``log_prior_many``: the entry points of the CLI and the service
store.py     kernels in HDF5 files
"""
