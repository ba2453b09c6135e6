"""A small GPT trained on bytes. The file the agent edits.

Run `python train.py`. It saves `ckpt.pt` for the sealed evaluator (`python prepare.py evaluate`,
contract in prepare.py) and prints a summary block whose `val_bpb` is computed in this process,
so the harness treats it as forgeable. `OUROBOROS_BUDGET_S` (default 300) is the budget.

How long it trains depends on the device:
- CUDA (autoresearch's rule): for the wall-clock budget, counted from the start of the training
  loop (compilation included), with bf16 autocast, TF32, fused attention and `torch.compile`;
  with GPU_SCALE on, the CPU-sized shape below is multiplied by the GPU_* factors (a guess for a
  5-minute H100 run, not a tuned setting). The result depends on the GPU's speed.
- CPU: a FIXED number of bytes, CPU_TOKENS_PER_S x the budget, on CPU_THREADS threads, so the same
  code gives the same val_bpb whatever the machine's load (measured spread: see the README). The
  budget stays the hard limit: a change too slow to train its bytes in time is killed by the
  harness (timeout). Uncompiled, because compiling would eat most of a budget of seconds.
Everything a search may change is the ALL_CAPS block below.

Regimes: on CPU the default 300 s budget trains 0.3M bytes, a fifth of one pass over the ~1.6 MB
default training split (compute-limited). On a GPU 5 minutes is hundreds of passes, so it
is data-limited: expect model size, DROPOUT and WEIGHT_DECAY to matter more than raw speed there.
"""

import math
import os
import time
from dataclasses import asdict, dataclass

import prepare
import torch
import torch.nn as nn
import torch.nn.functional as F

# --- model shape (CPU-sized: ~0.86M parameters, ~8K bytes per CPU-second of training) -----------
DEPTH = 4  # transformer blocks; cost grows linearly, 4 is enough for byte-level structure
N_EMBD = 128  # residual width in channels; must be divisible by N_HEAD
N_HEAD = 4  # attention heads; head size N_EMBD // N_HEAD = 32 channels
MLP_RATIO = 4  # hidden width of the MLP as a multiple of N_EMBD (GPT-2's choice)
ACTIVATION = "gelu"  # MLP nonlinearity: "gelu", "relu" or "silu"
DROPOUT = 0.0  # probability; off because short runs underfit rather than overfit
TIE_EMBEDDINGS = True  # share input embedding and output head: fewer parameters, same quality

# --- optimization ---------------------------------------------------------------------------------
BATCH_SIZE = 8  # sequences of prepare.CONTEXT_LEN bytes per step; small so CPU takes many steps
LEARNING_RATE = 3e-3  # peak AdamW step size; tiny models tolerate a high rate
MIN_LR_FRAC = 0.1  # learning rate at the end of warmdown, as a fraction of the peak
WEIGHT_DECAY = 0.1  # decoupled AdamW decay on matrices only (not norms, biases, embeddings)
BETA1 = 0.9  # AdamW first-moment decay
BETA2 = 0.95  # AdamW second-moment decay; below 0.999 for stability at high learning rates
GRAD_CLIP = 1.0  # max global gradient norm; 0 disables clipping
WARMUP_FRAC = 0.05  # fraction of training (steps on CPU, time on CUDA) ramping the rate up from 0
WARMDOWN_FRAC = 0.3  # fraction of training spent decaying linearly to MIN_LR_FRAC

# --- run ------------------------------------------------------------------------------------------
SEED = 1337  # torch RNG seed for initialization and batch sampling
# Bytes trained per second of budget on CPU: 1024 is one step of 8 x 256 bytes every 2 s, 150
# steps in the default 300 s. The default model trains ~8K bytes per CPU-second on one thread
# (0.26 CPU-s a step, measured on this project's 2-core machine), so those 150 steps need ~40 s
# of CPU: 300 s holds them twice over when the run gets a third of a core (load ~7 on 2 cores),
# but not at load ~20 (measured: 604 s). Raise it on a quiet machine; lower it for bigger models.
CPU_TOKENS_PER_S = 1024
# Threads on CPU. 1: with 2 threads torch ran 6x SLOWER than with 1 on a loaded 2-core machine
# (load 5.6), and a fixed count keeps the result identical across machines with other core counts.
CPU_THREADS = 1
GPU_SCALE = True  # on CUDA, multiply the shape by the factors below; no effect on CPU
GPU_DEPTH_MULT = 2  # DEPTH x2 on a GPU
GPU_WIDTH_MULT = 4  # N_EMBD and N_HEAD x4 on a GPU (head size unchanged)
GPU_BATCH_MULT = 8  # BATCH_SIZE x8 on a GPU, to keep it busy

# Not knobs (lower case): peak dense bf16 FLOP/s for the MFU estimate; unknown GPUs report 0.
peak_flops_by_gpu = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class GPTConfig:
    vocab_size: int = prepare.VOCAB_SIZE
    context_len: int = prepare.CONTEXT_LEN
    depth: int = DEPTH
    n_embd: int = N_EMBD
    n_head: int = N_HEAD
    mlp_ratio: int = MLP_RATIO
    activation: str = ACTIVATION
    dropout: float = DROPOUT
    tie_embeddings: bool = TIE_EMBEDDINGS


activations = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        # Fused (flash) attention on CUDA, an efficient kernel on CPU.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.fc_out = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)
        self.act = activations[cfg.activation]
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.fc_out(self.act(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.context_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale residual writes so depth does not blow up
            for proj in (block.attn.proj, block.fc_out):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx):
        """Bytes (B, T) -> logits (B, T, vocab_size)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_model(config: dict) -> GPT:
    """Rebuild the model from a checkpoint's config; the evaluator's entry point."""
    return GPT(GPTConfig(**config))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lr_factor(progress: float) -> float:
    """Learning-rate multiplier at `progress` (fraction of training done: steps on CPU, time on CUDA)."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return MIN_LR_FRAC + (1 - MIN_LR_FRAC) * (1 - progress) / WARMDOWN_FRAC
    return 1.0


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    others = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [
        {"params": matrices, "weight_decay": WEIGHT_DECAY},
        {"params": others, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=(BETA1, BETA2), fused=fused)


def main() -> None:
    t_start = time.time()
    budget = float(os.environ.get("OUROBOROS_BUDGET_S", "300"))
    torch.manual_seed(SEED)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 for any matmul left outside autocast
    else:
        torch.set_num_threads(CPU_THREADS)

    scale = GPU_SCALE and cuda
    depth = DEPTH * (GPU_DEPTH_MULT if scale else 1)
    width = GPU_WIDTH_MULT if scale else 1
    batch_size = BATCH_SIZE * (GPU_BATCH_MULT if scale else 1)
    cfg = GPTConfig(depth=depth, n_embd=N_EMBD * width, n_head=N_HEAD * width)
    model = GPT(cfg).to(device)
    num_params = count_params(model)
    optimizer = make_optimizer(model, fused=cuda)
    step_fn = torch.compile(model) if cuda else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    seq_len = cfg.context_len
    # Leave a little of the budget for the final evaluation and save.
    train_seconds = max(0.5, budget - min(5.0, 0.1 * budget))
    # CPU: a fixed number of steps, so the result does not depend on the machine's load.
    total_steps = max(1, round(CPU_TOKENS_PER_S * budget / (batch_size * seq_len))) if not cuda else 0
    length = f"{total_steps} steps" if total_steps else f"{train_seconds:.0f}s"
    print(f"device: {device}  params: {num_params / 1e6:.2f}M  budget: {budget:.0f}s  training: {length}",
          flush=True)

    x, y = prepare.get_batch("train", batch_size, seq_len, device)
    t_train = time.time()
    step, elapsed, progress, next_log = 0, 0.0, 0.0, 0.0
    while progress < 1:
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * lr_factor(progress)
        with autocast:
            loss = F.cross_entropy(step_fn(x).view(-1, cfg.vocab_size).float(), y.reshape(-1))
        x, y = prepare.get_batch("train", batch_size, seq_len, device)  # overlaps the GPU work
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if GRAD_CLIP > 0:
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        step += 1
        elapsed = time.time() - t_train
        progress = step / total_steps if total_steps else elapsed / train_seconds
        if progress >= next_log or progress >= 1:  # .item() syncs the GPU, so only a few times per run
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise SystemExit(f"FAIL: loss is {loss_value} at step {step}")
            print(f"step {step:5d}  loss {loss_value:.4f}  elapsed {elapsed:6.1f}s", flush=True)
            next_log += 0.1
    training_seconds = time.time() - t_train
    if training_seconds > budget:
        print(f"warning: training took {training_seconds:.0f}s, past the {budget:.0f}s budget; the harness "
              "kills such a run: lower CPU_TOKENS_PER_S or make the model cheaper", flush=True)

    val_bpb = prepare.evaluate_bpb(model, device)
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict()}, "ckpt.pt")

    tokens = step * batch_size * seq_len
    flops_per_token = 6 * num_params + 12 * cfg.depth * cfg.n_embd * seq_len
    peak = 0.0
    if cuda:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in peak_flops_by_gpu.items() if k in name), 0.0)
    mfu = 100 * flops_per_token * tokens / training_seconds / peak if peak else 0.0
    peak_vram_mb = torch.cuda.max_memory_allocated() / 1024**2 if cuda else 0.0
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {tokens / 1e6:.3f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.2f}")
    print(f"depth:            {cfg.depth}")


if __name__ == "__main__":
    main()
