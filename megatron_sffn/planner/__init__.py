"""Layout planner: predicted peak memory per GPU and step time for (tensor, pipeline, data,
ZeRO, micro-batch, activation checkpointing, sequence parallel) layouts of one config.

Why a model and not a trial run: a 6.7B or 13B layout that does not fit costs minutes of
GPU time to find out, and the best one depends on the structure (a lowrank FFN moves T x r
through the tensor group, a dense one T x d). The memory and time models are written down
in docs/performance.md ("Layout planner"); measured peaks go beside the predictions through
`measured.py`.

  layout.py       one candidate layout and its --override form
  pieces.py       per-rank parameters and FLOPs of each piece, from the model's own modules
                  built on the meta device at the layout's tensor size
  activations.py  bytes autograd keeps per token and block, tensor by tensor, with share rules
  memory.py       bytes per GPU and stage: weights, gradients, optimizer state, activations
  timing.py       seconds per step: compute, recompute, collectives, bubble, optimizer
  plan.py         enumeration, legality through config.validate, prediction, ranking
  hardware.py     the named constants (achievable TFLOP/s, link bandwidths, overheads)
  measured.py     measured peaks and throughput beside the predictions
"""
