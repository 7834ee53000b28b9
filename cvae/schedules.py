"""Training schedules as pure functions of the step: KL weight and teacher-forcing ratio.

Epochs are 1-based (epoch 1 is the first); iterations are 0-based over the whole run.
"""

from __future__ import annotations

from cvae.config import KlCfg, TfCfg


def kl_beta(it: int, total_iters: int, kl: KlCfg) -> float:
    """KL weight at iteration `it`: cyclical annealing (Fu et al. 2019), monotonic = one cycle."""
    if kl.mode == "none":
        return kl.beta
    cycles = 1 if kl.mode == "monotonic" else kl.cycles
    period = total_iters / cycles
    tau = (it % period) / period  # position inside the current period, in [0, 1)
    return kl.beta * min(1.0, tau / kl.ratio)


def tf_decay_step(tf: TfCfg, niter: int) -> float:
    """Per-epoch drop; decay_step 0 means linear to the lower bound by the last epoch."""
    if tf.decay_step > 0:
        return tf.decay_step
    decaying_epochs = niter - tf.start_decay_epoch
    return (tf.ratio - tf.lower_bound) / decaying_epochs if decaying_epochs > 0 else 0.0


def teacher_forcing_ratio(epoch: int, tf: TfCfg, niter: int) -> float:
    """Ratio used in (1-based) `epoch`: flat through start_decay_epoch, then down by one step per epoch."""
    k = max(0, epoch - tf.start_decay_epoch)
    return max(tf.lower_bound, tf.ratio - k * tf_decay_step(tf, niter))
