"""Compute kernels of rnnlm-engine (installed as ``rnnlm_engine.kernels``).

``cpu`` holds Numba CPU kernels, ``cuda`` their numba.cuda twins with the same names and
contracts; every kernel has a float64 twin of the same name in ``rnnlm_engine.oracle``.
The kernels know nothing of vocabularies, files or the CLI.
"""
