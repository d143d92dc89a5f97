"""thinc's Adam (`Adam.v1`) for the weights of a PyTorch model, as one call of torch's fused kernel.

thinc's `PyTorchShim.finish_update` calls its optimizer once per weight, over numpy views, in
unvectorized loops. `fused_adam_update` gives every weight the step `thinc.optimizers.Optimizer`
gives it: the optimizer's current (scheduled) learn_rate, beta1, beta2, eps and L2 (added to the
gradient, or with L2_is_weight_decay applied after the step), `grad_clip` on each weight's own
gradient norm, `lr_scale` on the step and the decay. The moments and step counts stay in the
optimizer (`mom1`, `mom2`, `nr_update`, under the shim's keys), so a new optimizer starts afresh
as with thinc. Not kept: parameter averages, which thinc's `PyTorchShim.use_params` never reads
(it looks for string keys; the optimizer's are tuples).
"""

import math
from typing import Dict, List, Tuple

import torch
from thinc.api import Optimizer
from thinc.shims import PyTorchShim
from torch.optim.adam import adam


def fused_adam_applies(optimizer: object, device: torch.device) -> bool:
    """Whether `fused_adam_update` makes `optimizer`'s steps for weights on `device`: a thinc
    Optimizer making Adam steps (not RAdam's, not SGD's), on the CPU (on a GPU thinc keeps the
    moments in cupy arrays, which this does not handle)."""
    return (
        isinstance(optimizer, Optimizer)
        and not optimizer.use_radam
        and optimizer.b1 > 0.0
        and optimizer.b2 > 0.0
        and device.type == "cpu"
    )


def fused_adam_update(shim: PyTorchShim, optimizer: Optimizer, lr_scale: float = 1.0) -> None:
    """Update the shim's weights that have gradients, unless the fp16 gradient scaler found an
    overflow in them (which skips the step, as thinc does), then zero the gradients."""
    named = [(name, param) for name, param in shim._model.named_parameters() if param.grad is not None]
    scaler = shim._grad_scaler
    if named:
        if not scaler.found_inf:
            with torch.no_grad():
                _adam_step([((shim.id, name), param) for name, param in named], optimizer, lr_scale)
        # Zeroed, not dropped: the next backward adds into them (the word embeddings' only where
        # looked up, bert.encoder.BertEmbeddings), as thinc's PyTorchShim does.
        torch._foreach_zero_([param.grad for _, param in named])
    scaler.update()


def _adam_step(
    weights: List[Tuple[Tuple[int, str], torch.Tensor]], optimizer: Optimizer, lr_scale: float
) -> None:
    params = [param for _, param in weights]
    grads = [param.grad for param in params]
    if optimizer.L2 != 0 and not optimizer.L2_is_weight_decay:
        torch._foreach_add_(grads, params, alpha=optimizer.L2)
    if optimizer.grad_clip:
        _clip_each(grads, optimizer.grad_clip)
    # Weights of equal step count share the bias corrections (all of them, unless some had no
    # gradient in an earlier update).
    by_step: Dict[int, List[int]] = {}
    for i, (key, _) in enumerate(weights):
        optimizer.nr_update[key] += 1
        by_step.setdefault(optimizer.nr_update[key], []).append(i)
    b1, b2 = optimizer.b1, optimizer.b2
    learn_rate = lr_scale * optimizer.learn_rate
    # thinc decays the weights after the step: (w - step) * (1 - decay). torch's AdamW decays them
    # before it, w * (1 - lr * weight_decay) - step, the same with the step scaled by 1 - decay.
    decay = learn_rate * optimizer.L2 if optimizer.L2_is_weight_decay else 0.0
    lr = learn_rate * (1.0 - decay)
    for step, indices in by_step.items():
        moments = [_moments(optimizer, *weights[i]) for i in indices]
        adam(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [mom1 for mom1, _ in moments],
            [mom2 for _, mom2 in moments],
            [],
            # The kernel counts each step itself, from the number before this one.
            [torch.tensor(float(step - 1)) for _ in indices],
            fused=True,
            decoupled_weight_decay=True,
            amsgrad=False,
            maximize=False,
            beta1=b1,
            beta2=b2,
            lr=lr,
            weight_decay=decay / lr if decay else 0.0,
            # thinc adds eps to sqrt(mom2), torch to sqrt(mom2 / (1 - b2 ** step)).
            eps=optimizer.eps / math.sqrt(1.0 - b2**step),
        )


def _clip_each(grads: List[torch.Tensor], threshold: float) -> None:
    """thinc's clip_gradient on each gradient: scaled down to norm `threshold` if above it."""
    norms = torch.stack(torch._foreach_norm(grads)).tolist()
    clipped = [(grad, threshold / norm) for grad, norm in zip(grads, norms) if norm >= threshold]
    if clipped:
        torch._foreach_mul_([grad for grad, _ in clipped], [scale for _, scale in clipped])


def _moments(
    optimizer: Optimizer, key: Tuple[int, str], param: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weight's first and second moments, stored as thinc stores them (flat float32 numpy
    arrays, here sharing memory with torch tensors) so that thinc could take over."""
    for moments in (optimizer.mom1, optimizer.mom2):
        if key not in moments:
            moments[key] = torch.zeros(param.numel(), dtype=torch.float32).numpy()
    return (
        torch.from_numpy(optimizer.mom1[key]).view_as(param),
        torch.from_numpy(optimizer.mom2[key]).view_as(param),
    )
