"""What the model tests share: a PyTorch model's train-mode step in the Flax convention."""

import numpy as np


def torch_train_step(model, images_nchw: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One train-mode forward of a torch ``model``: its logits and its state dict afterwards,
    with each running variance restated in Flax's convention.

    Both frameworks normalise a training batch by its biased variance and move the running mean
    by 0.1 of the batch mean (torch ``momentum=0.1`` = Flax ``momentum=0.9``). The running
    variance differs: torch moves it towards the unbiased batch variance (× n / (n − 1), n the
    batch × height × width of that layer), Flax towards the biased one. A forward hook records
    each layer's n, which undoes the factor.
    """
    import torch

    counts, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            old = module.running_var.detach().clone()

            def record(module, inputs, output, name=name, old=old):
                batch, _, height, width = inputs[0].shape
                counts[name] = (batch * height * width, old)

            hooks.append(module.register_forward_hook(record))
    model.train()
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(images_nchw)).numpy()
    finally:
        model.eval()
        for hook in hooks:
            hook.remove()
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    for name, (n, old) in counts.items():
        key = f"{name}.running_var"
        kept = 0.9 * old.numpy()
        state[key] = kept + (state[key] - kept) * (n - 1) / n
    return logits, state
