r"""
# Training and fine-tuning loop

This is the loop that trains the modules of `model.py`, from scratch (the demo model) or from a checkpoint
(fine-tuning). The model is the same `NeoXModel(embedding, *layers, norm, readout)` (`model.py`) that generation
uses; only the parameters with `requires_grad` change (see `finetune.py` for choosing them).

## The loss

For inputs $x_{1 \dots T}$ and targets $y_t = x_{t+1}$ (see `text_dataset.py`), the model gives logits $z_t$ at
every position and the loss is the mean cross-entropy of the next token,

$$\mathcal{L} = -\frac{1}{BT} \sum_{b, t} \log \operatorname{softmax}(z_{b,t})_{y_{b,t}}$$

in nats per token. $e^{\mathcal{L}}$ is the perplexity, and $\mathcal{L} / \ln 2$ times tokens per character the
bits per character.

## The optimiser and the schedule

[AdamW](https://arxiv.org/abs/1711.05101), with weight decay on the matrices only (not on biases and layer norm
parameters, as in gpt-neox), and gradient clipping: when the norm of all gradients together exceeds `grad_clip`,
they are scaled down to it. The learning rate warms up linearly to its peak $\eta$ over the first $W$ steps and
then follows a cosine down to $r \eta$ ($r$ = `min_lr_ratio`), which it reaches at step $S$ = `steps`:

$$\eta_s = \begin{cases} \eta \, \frac{s + 1}{W} & s < W \\
\eta \Big(r + (1 - r) \, \frac{1}{2}\big(1 + \cos \pi \frac{s - W}{S - W}\big)\Big) & s \ge W \end{cases}$$

## Saving memory and time on a GPU

* **Mixed precision.** Parameters (at least the trained ones) stay in fp32, and matrix multiplications run in
  bf16 or fp16 under `torch.autocast`. fp16's narrow range makes small gradients underflow to zero, so with fp16
  a `GradScaler` multiplies the loss by a large factor before `backward` and divides the gradients by it
  before the step (skipping steps whose gradients overflowed). bf16 has fp32's range and needs no scaler.
* **Activation checkpointing.** Backward needs every layer's intermediate activations. With checkpointing we
  keep only each transformer layer's input and recompute the layer's forward pass during backward: about a
  third more compute for a fraction of the memory (`torch.utils.checkpoint`).

## Several GPUs

* **One machine, a model too large for one GPU:** `LayerLoader(devices=[...])` places a contiguous run of
  layers on each GPU and each layer moves its input to its own device. Autograd records those copies, so
  backward sends gradients back across the devices by itself; gradient clipping and AdamW group the
  parameters by device. Only one GPU works at a time (this is pipeline placement without micro-batches), which
  is the price of fitting.
* **Several processes** (several machines, or one process per GPU), started with `torchrun`: each process
  (rank) takes its share of every global batch, and PyTorch's `DistributedDataParallel` averages the gradients
  (every rank holds the whole model), or FSDP's `fully_shard` splits parameters, gradients and optimiser state
  over the ranks. Both give the same update as one process on the whole batch; `tests/test_distributed.py`
  checks it.

Progress and losses are written by [labml](https://github.com/labmlai/labml) (`monit`, `tracker`).
"""

import math
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn.neox.model import NeoXModel, TransformerLayer
from labml_nn.neox.training.text_dataset import TokenWindows

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainingConfig:
    """The settings of a training run. `batch_size` is the **global** batch: split over the ranks when
    training with several processes."""
    steps: int
    batch_size: int = 8
    learning_rate: float = 3e-4
    # Warm-up steps $W$; `None` means 10% of the steps, at most 100
    warmup_steps: Optional[int] = None
    # The learning rate at the last step, as a fraction $r$ of the peak
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # `fp32`, or `bf16` / `fp16` autocast (on CUDA; bf16 also works, slowly, on a CPU)
    precision: str = "fp32"
    activation_checkpointing: bool = False
    # Validate every so many steps (0: only at the end), on at most `valid_batches` batches (0: all)
    valid_every: int = 0
    valid_batches: int = 0
    # Seed of the batch sampler; every rank must use the same one
    seed: int = 0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)


# ## The learning-rate schedule
#
# $\eta_s$ of the formula above, for step $s$ counted from 0. `progress` is $\frac{s - W}{S - W}$, held at 1
# should a run go past $S$.
def learning_rate(step: int, config: TrainingConfig) -> float:
    peak, warmup, steps = config.learning_rate, config.warmup_steps, config.steps
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return peak * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


# ## The optimiser
def make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    r"""
    AdamW over the parameters that train. Matrices (embedding, linear weights) get weight decay; vectors
    (biases, layer norm gains) do not.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("No parameter has requires_grad=True, so there is nothing to train. "
                         "Choose what trains with `finetune.select_trainable`.")
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate, betas=config.betas)


# ## The loss
#
# $\mathcal{L}$, the cross-entropy, in fp32 whatever the logits' dtype: logits `[B, T, V]` and targets `[B, T]`
# flattened to `[BT, V]` and `[BT]`; the mean by default, the sum for validation
def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    targets = targets.to(logits.device)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)


def autocast_context(precision: str, device: torch.device):
    """`torch.autocast` for `bf16` and `fp16`; nothing for `fp32`."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ## Validation
@torch.no_grad()
def evaluate(model: nn.Module, dataset: TokenWindows, batch_size: int, precision: str = "fp32",
             max_batches: int = 0) -> Tuple[float, int]:
    r"""
    The total cross-entropy in nats over the windows of `dataset`, and the number of tokens scored. The mean
    loss is their ratio; summing first lets ranks and batches of different sizes be combined exactly.
    """
    was_training = model.training
    model.eval()
    device = _input_device(model)
    total, n_tokens = 0.0, 0
    for i, (ids, targets) in enumerate(dataset.batches(batch_size)):
        if max_batches and i >= max_batches:
            break
        with autocast_context(precision, device):
            logits = model(ids.to(device))
        total += lm_loss(logits, targets, reduction="sum").item()
        n_tokens += targets.numel()
    model.train(was_training)
    return total, n_tokens


def _input_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ## The trainer
class Trainer:
    r"""
    Trains `modules` (the model's modules in order, e.g. `list(LayerLoader(...).load())` or
    `build_layers(config)`) on the windows of `train_data`, validating on `valid_data`.

    `distributed` is `None` for one process, or `"ddp"` / `"fsdp"` inside a `torch.distributed` process group
    (started by `torchrun`, or `torch.multiprocessing.spawn` in the tests). With `track=True` progress and
    losses go to labml's `tracker` (start a labml experiment first to also write them to files); only rank 0
    tracks.
    """

    def __init__(self, modules: Sequence[nn.Module], train_data: TokenWindows,
                 valid_data: Optional[TokenWindows], config: TrainingConfig,
                 distributed: Optional[str] = None, track: bool = True):
        self.modules = list(modules)
        self.train_data, self.valid_data, self.config = train_data, valid_data, config
        self.rank, self.world_size = 0, 1
        # One module around the layers (as `DistributedDataParallel` and `fully_shard` want), running them through
        # `NeoXModel.forward`, which also does the activation checkpointing
        self.model: nn.Module = NeoXModel(*self.modules, activation_checkpointing=config.activation_checkpointing)
        if distributed is not None:
            self.model = self._distribute(distributed)
        self.device = _input_device(self.model)
        self.track = track and self.rank == 0
        self.optimizer = make_optimizer(self.model, config)
        # The loss scaler for fp16; with `enabled=False` its methods pass everything through unchanged
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step_index = 0

    # ### Spreading the work over processes
    def _distribute(self, strategy: str) -> nn.Module:
        import torch.distributed as dist
        if not dist.is_initialized():
            raise RuntimeError("distributed training needs a process group: start the script with torchrun "
                               "(which sets RANK and WORLD_SIZE) and call torch.distributed.init_process_group")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.config.batch_size % self.world_size:
            raise ValueError(f"the global batch of {self.config.batch_size} does not split evenly over "
                             f"{self.world_size} ranks")
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            devices = {p.device for p in self.model.parameters()}
            device = _input_device(self.model)
            # On a GPU, each process drives one device. On a CPU, and for a model whose layers are spread over
            # several GPUs, DDP must be given no device ids
            single_gpu = device.type == "cuda" and len(devices) == 1
            return DistributedDataParallel(self.model, device_ids=[device] if single_gpu else None)
        if strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard
            # Shard each transformer layer on its own (its parameters are gathered just before it runs and
            # freed after), then the rest (embedding, final norm, readout) as one group
            for module in self.modules:
                if isinstance(module, TransformerLayer):
                    fully_shard(module)
            return fully_shard(self.model)
        raise ValueError(f"distributed strategy {strategy!r} is neither 'ddp' nor 'fsdp'")

    def _all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    # ### One batch
    def sample_batch(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        The global batch of step `step` is drawn by a generator seeded from `seed` and `step`, the same on every
        rank; rank $r$ of $N$ takes rows $r B / N \dots (r + 1) B / N - 1$. So $N$ processes see exactly the
        windows one process would.
        """
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        indices = torch.randint(len(self.train_data), (self.config.batch_size,), generator=generator)
        share = self.config.batch_size // self.world_size
        return self.train_data.batch(indices[self.rank * share:(self.rank + 1) * share])

    def train_step(self) -> Dict[str, float]:
        config, step = self.config, self.step_index
        lr = learning_rate(step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids, targets = self.sample_batch(step)
        self.model.train()
        with autocast_context(config.precision, self.device):
            logits = self.model(ids.to(self.device))
        loss = lm_loss(logits, targets)
        # Backward (through every device the layers sit on, and through the ranks' gradient averaging)
        self.scaler.scale(loss).backward()
        # Unscale before clipping, so that the norm is that of the true gradients
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trained_parameters(), config.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_index += 1
        return {"loss.train": self._all_reduce_mean(loss.item()), "grad_norm": float(grad_norm), "lr": lr}

    def _trained_parameters(self) -> List[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ### Validation
    def validate(self) -> float:
        r"""
        The mean validation loss in nats per token. With several ranks each scores every $N$-th batch and the
        totals are summed over ranks.
        """
        if self.valid_data is None:
            return float("nan")
        config = self.config
        share = max(1, config.batch_size // self.world_size)
        if self.world_size == 1:
            total, n_tokens = evaluate(self.model, self.valid_data, share, config.precision, config.valid_batches)
        else:
            total, n_tokens = self._evaluate_distributed(share)
        return total / n_tokens

    def _evaluate_distributed(self, batch_size: int) -> Tuple[float, int]:
        import torch.distributed as dist
        n_batches = math.ceil(len(self.valid_data) / batch_size)
        if self.config.valid_batches:
            n_batches = min(n_batches, self.config.valid_batches)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.model.eval()
        # Every rank runs the same number of forward passes (FSDP gathers parameters collectively), scoring
        # nothing on the padding passes past the last batch
        with torch.no_grad():
            for b in range(self.rank, math.ceil(n_batches / self.world_size) * self.world_size, self.world_size):
                start = min(b, n_batches - 1) * batch_size
                ids, targets = self.valid_data.batch(range(start, min(start + batch_size, len(self.valid_data))))
                with autocast_context(self.config.precision, self.device):
                    logits = self.model(ids.to(self.device))
                if b < n_batches:
                    totals[0] += lm_loss(logits, targets, reduction="sum").double()
                    totals[1] += targets.numel()
        dist.all_reduce(totals)
        return totals[0].item(), int(totals[1].item())

    # ### The loop
    def train(self) -> Dict[str, float]:
        r"""
        Run the remaining steps, printing the losses as it goes, and validate before the first step, every
        `valid_every` steps and at the end. Returns the last training loss and the final validation loss.
        """
        from labml import monit, tracker
        config = self.config
        # labml draws its progress line with terminal codes; into a pipe or a file we print plain lines instead
        on_terminal = sys.stdout.isatty()
        if self.track:
            tracker.set_scalar("loss.*", True)
            tracker.set_scalar("lr", False)
            tracker.set_scalar("grad_norm", False)
        if self.track and on_terminal:
            steps = monit.loop(range(self.step_index, config.steps))
        else:
            steps = range(self.step_index, config.steps)
        print_every = max(1, config.steps // 20)
        values = {}
        if self.step_index == 0 and self.valid_data is not None:
            # The validation loss before any update: the baseline a fine-tuning run is measured against
            start = self.validate()
            if self.track:
                tracker.save(0, {"loss.valid": start})
                tracker.new_line()
        for step in steps:
            values = self.train_step()
            last = self.step_index == config.steps
            if (config.valid_every and self.step_index % config.valid_every == 0) or last:
                values["loss.valid"] = self.validate()
            if self.track:
                tracker.save(self.step_index, values)
                if "loss.valid" in values and on_terminal:
                    tracker.new_line()
            if self.track and not on_terminal and (self.step_index % print_every == 0 or "loss.valid" in values):
                print(f"step {self.step_index}/{config.steps}: " +
                      ", ".join(f"{k} {v:.4g}" for k, v in values.items()), flush=True)
        return values


# ## Experiment tracking
@contextmanager
def labml_experiment(name: str, log_dir, comment: Optional[str] = None):
    r"""
    Run the body inside a labml experiment that writes the losses to files under `log_dir/name/<run uuid>/`
    (the folder is what the `with` gives), and to the screen when standard output is a terminal:

    `with labml_experiment("neox_finetune", log_dir) as logs: trainer.train()`

    labml would otherwise put its logs beside the first file that imported it (inside site-packages for an
    installed package), so we configure the folder explicitly. It also prints notices a user cannot act on: that
    no `.labml.yaml` sits beside the installed package (we configure labml in code instead), that the log folder
    is not a git repository, and a coloured banner; we keep those off the screen. Into a pipe or a file only
    plain text goes (`Trainer.train` prints its own plain progress lines there).
    """
    import io
    from pathlib import Path
    from labml import experiment, lab
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    on_terminal = sys.stdout.isatty()
    with redirect_stdout(io.StringIO()):
        lab.configure({"path": str(log_dir), "experiments_path": ".", "data_path": "data"})
        experiment.create(name=name, writers={"screen", "file"} if on_terminal else {"file"}, comment=comment)
    with (nullcontext() if on_terminal else redirect_stdout(io.StringIO())):
        run = experiment.start()
        run.__enter__()
    try:
        yield log_dir / name / experiment.get_uuid()
    except BaseException:
        run.__exit__(*sys.exc_info())
        raise
    else:
        run.__exit__(None, None, None)


# ## Whole tensors back from FSDP
def gather_full_modules(modules: Sequence[nn.Module]) -> List[nn.Module]:
    r"""
    Plain, unsharded CPU copies of modules that `fully_shard` split over the ranks, with the same parameters
    trainable, for saving. Every rank must call this (gathering is collective); each gets the whole model.
    """
    from labml_nn.neox.loader import build_module, part_of
    from labml_nn.neox.training.lora import wrap_like
    copies = []
    for module in modules:
        state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
                 for k, v in module.state_dict().items()}
        trained = {name for name, p in module.named_parameters() if p.requires_grad}
        # `fully_shard` changes a module's class to a subclass; `part_of` still tells what it was
        with torch.device("meta"):
            copy = build_module(part_of(module), module.config)
            # The same LoRA adapters as the original's, if it has any (`lora.py`)
            wrap_like(module, copy)
        copy.load_state_dict(state, assign=True)
        for name, p in copy.named_parameters():
            p.requires_grad_(name in trained)
        copies.append(copy)
    return copies
