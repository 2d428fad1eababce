"""Exponential moving averages of the model's parameters, one per rate."""
import torch


class EMA:
    """ema <- ema + (1 - rate) (param - ema) for every rate, after every optimiser step.

    Rates are kept as the strings given on the command line: they name the checkpoint files.
    """

    def __init__(self, model, rates):
        self.model = model
        self.rates = list(rates)
        self.names = [name for name, _ in model.named_parameters()]
        self.params = {rate: [p.detach().clone() for p in model.parameters()] for rate in self.rates}

    @torch.no_grad()
    def update(self):
        current = [p.detach() for p in self.model.parameters()]
        for rate in self.rates:
            torch._foreach_lerp_(self.params[rate], current, 1.0 - float(rate))

    def state_dict(self, rate):
        """A plain model state dict holding the EMA weights (buffers from the live model), on the
        CPU: copied one tensor at a time, never a second full model on the GPU."""
        live = dict(zip(self.names, self.params[rate]))
        return {k: live.get(k, v).detach().to("cpu", copy=True)
                for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def copy_to(self, target, rate):
        """Put the EMA weights of `rate` into `target`, a copy of the live model, on its device
        (buffers from the live model): no trip through the CPU."""
        live = dict(zip(self.names, self.params[rate]))
        target_state = target.state_dict()
        for name, value in self.model.state_dict().items():
            target_state[name].copy_(live.get(name, value))

    @torch.no_grad()
    def load_state_dict(self, rate, state):
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA {rate} state lacks parameters: {', '.join(missing[:5])}")
        for name, value in zip(self.names, self.params[rate]):
            value.copy_(state[name])
