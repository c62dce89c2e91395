"""``hpc-batch simulate``: a discrete-event site simulator driven by the real policy code."""
