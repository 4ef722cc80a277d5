"""Per-GPU memory and throughput estimates for a model config on a cluster layout (``physfm
estimate``).

Model states follow mixed-precision Adam as DeepSpeed allocates it (ZeRO paper, Rajbhandari et al.
2020, plus the fp32 gradient partition DeepSpeed keeps for the optimizer step), in bytes per
parameter::

    bf16 params 2 | bf16 grads 2 | fp32 grad partition 4 | fp32 master params 4 | Adam m, v 8

ZeRO-1 partitions the fp32 states over the N data-parallel GPUs, ZeRO-2 also the gradients, ZeRO-3
also the bf16 params (each GPU then gathers one layer at a time: 4 bytes/param of the largest layer,
params + grads, as DeepSpeed's estimators assume). ZeRO-3 keeps its gradient partition in the
accumulation dtype: fp32 (``"data_types": {"grad_accum_dtype": "fp32"}``, the numerically safe
choice with bf16) is counted, so the bf16 gradient term is not (with bf16 accumulation it is 2
bytes/param plus an fp32 copy of one optimiser sub-group at step time). CPU offload moves the fp32
states (and, for ZeRO-3, the params) to host memory. These figures match
``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``
(tests/test_estimate.py).

Communication buckets (``buffers``) are sized from the stock configs/deepspeed/zero*.json (see
``bucket_bytes``), in the gradients' dtype.

Activations count the tensors autograd keeps per token and layer under bf16 with flash attention (no
L x L scores): 8 d + 4 kv + 4 ffn elements (norm inputs/outputs, q/k/v before and after rotary, the
attention output, the four SwiGLU tensors); with per-block checkpointing only each block's input (d)
plus one block's full set during its recompute. The logits add ~10 bytes per predicted token per
vocabulary entry (bf16 logits, fp32 log-softmax kept for backward, fp32 gradient). Not counted: the
CUDA context (~0.5-1 GiB) and allocator fragmentation, so leave ~10-20 % headroom.

``device="cpu"`` (``physfm estimate --device cpu [--dtype fp32|bf16]``) is training on CPUs, as this
project's CPU machines do: the same terms with params, grads and activations in ``dtype`` (fp32 by
default; bf16 for bf16-mixed), and host memory is the device's, so offloaded states count in each
rank's figure (no 1.5x pinned-buffer factor: nothing is pinned on a CPU). What DeepSpeed 0.19
allocates there (runtime/zero/stage_1_and_2.py, stage3.py), counted so:

* every stage keeps an fp32 master partition (4 bytes/param / N) beside Adam's (8 / N), even of fp32
  params (ZeRO-3's "already fp32 on this device" shortcut compares a torch.device with a string, so
  never applies);
* ZeRO-1/2 flatten the gradient partition to fp32 at the step (4 / N); with the optimizer offloaded
  they also keep a param-dtype copy-back buffer of the partition (``dtype`` / N);
* ZeRO-3 holds gathered parameters up to stage3_max_live_parameters (at least the layer in use), and
  only the layer in use's whole gradient;
* ZeRO-3 flattens one sub-group's gradients to fp32 at the step, and torch's AdamW takes the square
  root of one sub-group's second moment into a new tensor: ``step_scratch`` = 8 bytes x
  min(sub_group_size, P / N), sub_group_size as configs/deepspeed/zero3*.json set it; torch's AdamW
  under ZeRO-1/2 makes the same temporary of the whole partition (4 / N); DeepSpeedCPUAdam (offload)
  makes none.
bench/scale.py measures these figures against the resident memory of real 2-rank runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from data_pipelines.errors import InputError
from physfm.models.trunk import ModelConfig
from physfm.train.strategies import StrategyConfig, build_deepspeed_config

GiB = 2**30
BYTES_BF16_PARAM, BYTES_BF16_GRAD, BYTES_FP32_GRAD, BYTES_FP32_MASTER, BYTES_ADAM = 2, 2, 4, 4, 8
OFFLOAD_CPU_BUFFER = 1.5  # DeepSpeed's additional_buffer_factor for pinned host memory
SUB_GROUP_SIZE = 100_000_000  # zero_optimization.sub_group_size of configs/deepspeed/zero3*.json
MAX_LIVE_PARAMETERS = 100_000_000  # zero_optimization.stage3_max_live_parameters of the same files
DEVICES = ("gpu", "cpu")
# params and grads on CPU (bf16: bf16-mixed, fp32 master weights)
DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass
class ParamCounts:
    total: int
    non_embedding: int  # without the input lookup tables (they cost no matmul FLOPs)
    # most parameters owned directly by one module (ZeRO-3 gathers one at a time)
    largest_layer: int


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Parameter counts of ``PhysicsTransformer(cfg)`` computed from the shape (no torch needed)."""
    d, f, hd, kv = cfg.d_model, cfg.ffn_hidden, cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    wqkv, wo, ffn = d * (d + 2 * kv), d * d, d * f
    per_layer = wqkv + wo + 3 * ffn + 2 * d + (2 * hd if cfg.qk_norm else 0)
    if cfg.head == "digits":  # per-digit tables (+ per-id table) in, one softmax per digit out
        digit_tables = [n * d for n in cfg.fsq_levels] + (
            [cfg.vocab_size * d] if cfg.id_embedding else []
        )
        tables = [sum(digit_tables), cfg.n_datasets * d]
        lm_head, copy_gain = sum(cfg.fsq_levels) * d, len(cfg.fsq_levels)
    else:
        tables = [cfg.vocab_size * d, cfg.n_datasets * d]
        lm_head = cfg.vocab_size * d
        # the learned logit of the input token
        copy_gain = 1 if cfg.prediction == "next_frame" else 0
    if cfg.n_cond_tokens > 1:
        tables.append(cfg.n_cond_params * cfg.n_param_buckets * d)
    non_embedding = cfg.n_layer * per_layer + d + lm_head + copy_gain
    return ParamCounts(
        total=non_embedding + sum(tables),
        non_embedding=non_embedding,
        largest_layer=max(wqkv, wo, ffn, lm_head, *tables),
    )


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 n_layer d_attn L (as
    ``PhysicsTransformer.flops_per_token``)."""
    return (
        6 * count_params(cfg).non_embedding + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
    )


def activation_bytes(
    cfg: ModelConfig,
    seq_len: int,
    micro_batch: int,
    predicted_tokens: int,
    checkpointing: bool,
    element_bytes: int = 2,
) -> int:
    """Bytes of activations kept for backward by one GPU's micro-batch (see module docstring);
    ``element_bytes`` 2 for bf16, 4 for fp32 (CPU)."""
    d, kv, f = cfg.d_model, cfg.n_kv_head * cfg.head_dim, cfg.ffn_hidden
    per_layer_token = element_bytes * (8 * d + 4 * kv + 4 * f)
    final_norm_token = element_bytes * 2 * d
    if checkpointing:
        per_token = cfg.n_layer * element_bytes * d + per_layer_token + final_norm_token
    else:
        per_token = cfg.n_layer * per_layer_token + final_norm_token
    logits = micro_batch * predicted_tokens * cfg.vocab_size * 10
    return micro_batch * seq_len * per_token + logits


@dataclass
class MemoryRow:
    stage: int
    offload: str  # "none" | "optimizer" | "optimizer+params"
    params: int  # bytes per GPU
    grads: int
    optimizer: int
    activations: int
    activations_ckpt: int
    # host memory for offloaded states, per node (x1.5 buffer as DeepSpeed assumes)
    cpu_per_node: int
    # temporaries of the optimizer step (counted on CPU; see the module docstring)
    step_scratch: int = 0
    buffers: int = 0  # DeepSpeed's communication buckets, sized by configs/deepspeed/zero*.json

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.step_scratch + self.buffers + self.activations

    @property
    def total_ckpt(self) -> int:
        return self.model_states + self.step_scratch + self.buffers + self.activations_ckpt


def model_state_bytes(
    n_params: int, largest_layer: int, n_gpus: int, stage: int, offload: str
) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes per GPU for one ZeRO stage and offload choice."""
    P, N = n_params, n_gpus
    fp32_states = BYTES_FP32_MASTER + BYTES_ADAM
    if stage in (1, 2):
        params = BYTES_BF16_PARAM * P
        if offload == "none":
            bf16_grads = BYTES_BF16_GRAD * P if stage == 1 else BYTES_BF16_GRAD * P // N
            return params, bf16_grads + BYTES_FP32_GRAD * P // N, fp32_states * P // N
        # Offloaded: gradient partitions stream to host buffers; ZeRO-1 still accumulates full bf16
        # grads.
        return params, (BYTES_BF16_GRAD * P if stage == 1 else 0), 0
    if stage == 3:
        # the gathered layer
        live = BYTES_BF16_PARAM * largest_layer, BYTES_BF16_GRAD * largest_layer
        if offload == "none":
            return (
                BYTES_BF16_PARAM * P // N + live[0],
                BYTES_FP32_GRAD * P // N + live[1],
                fp32_states * P // N,
            )
        if offload == "optimizer":
            return BYTES_BF16_PARAM * P // N + live[0], live[1], 0
        if offload == "optimizer+params":
            return live[0], live[1], 0
    raise ValueError(f"no ZeRO stage {stage} with offload {offload!r}")


def cpu_model_state_bytes(
    n_params: int,
    largest_layer: int,
    n_ranks: int,
    stage: int,
    offload: str,
    param_bytes: int = 4,
    sub_group_size: int = SUB_GROUP_SIZE,
    max_live_parameters: int = MAX_LIVE_PARAMETERS,
) -> tuple[int, int, int, int]:
    """(params, grads, optimizer, step scratch) bytes per rank training on CPUs, host memory
    included, with params and grads of ``param_bytes`` (4: fp32, 2: bf16-mixed); see the module
    docstring."""
    P, N, L, e = n_params, n_ranks, largest_layer, param_bytes
    # DeepSpeed keeps the fp32 master copy even of fp32
    fp32_states = (BYTES_FP32_MASTER + BYTES_ADAM) * P // N
    fp32_partition = 4 * P // N
    if stage in (1, 2):
        full_grads = e * P if stage == 1 else 0  # ZeRO-1 keeps whole gradients until the step
        # the partition, then its flat fp32 copy at the step; torch AdamW's sqrt temporary
        if offload == "none":
            return e * P, (full_grads or e * P // N) + fp32_partition, fp32_states, fp32_partition
        copy_back = e * P // N  # param-dtype buffer the updated partition is copied back through
        return e * P, full_grads + fp32_partition, fp32_states + copy_back, 0
    if stage == 3:
        # Gathered params: at least the layer in use, up to stage3_max_live_parameters (its whole
        # gradient, in grads)
        gathered = e * max(L, min(P, max_live_parameters))
        # one sub-group's gradients flattened to fp32 + AdamW's sqrt temporary of it
        if offload == "none":
            scratch = 2 * 4 * min(sub_group_size, -(-P // N))
            return e * P // N + gathered, e * P // N + e * L, fp32_states, scratch
        if offload in ("optimizer", "optimizer+params"):  # DeepSpeedCPUAdam: no temporaries
            return e * P // N + gathered, e * P // N + e * L + fp32_partition, fp32_states, 0
    raise ValueError(f"no ZeRO stage {stage} with offload {offload!r}")


def bucket_bytes(stage: int, offload: str, element_bytes: int) -> int:
    """Bytes of DeepSpeed's communication buckets per rank with the stock JSON of this stage and
    offload (configs/deepspeed/zero*.json; DeepSpeed's defaults where it is silent). ZeRO-1/2: the
    contiguous gradient bucket (two with overlap_comm, which alternate) and the parameter all-gather
    bucket; ZeRO-3: the gradient reduce bucket and the parameter prefetch bucket."""
    strategy = StrategyConfig(
        name="deepspeed",
        zero_stage=stage,
        offload_optimizer=offload != "none",
        offload_params=offload == "optimizer+params",
    )
    zero = build_deepspeed_config(strategy).get("zero_optimization", {})
    reduce = int(zero.get("reduce_bucket_size", 500_000_000))
    if stage == 3:
        elements = reduce + int(zero.get("stage3_prefetch_bucket_size", 50_000_000))
    else:
        n_grad_buckets = (
            (2 if zero.get("overlap_comm", False) else 1)
            if zero.get("contiguous_gradients", True)
            else 0
        )
        elements = n_grad_buckets * reduce + int(zero.get("allgather_bucket_size", 500_000_000))
    return element_bytes * elements


LAYOUTS = [
    (1, "none"),
    (1, "optimizer"),
    (2, "none"),
    (2, "optimizer"),
    (3, "none"),
    (3, "optimizer"),
    (3, "optimizer+params"),
]


@dataclass
class Estimate:
    n_params: int
    largest_layer: int
    nodes: int
    gpus_per_node: int
    seq_len: int
    micro_batch: int
    predicted_tokens: int
    flops_per_token: float
    mfu: float
    peak_tflops: float
    tokens_per_s_per_gpu: float
    tokens_per_s: float
    rows: list[MemoryRow]
    device: str = "gpu"
    dtype: str = "bf16"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [
            dict(asdict(r), model_states=r.model_states, total=r.total, total_ckpt=r.total_ckpt)
            for r in self.rows
        ]
        return out


def estimate(
    cfg: ModelConfig,
    nodes: int,
    gpus_per_node: int,
    seq_len: int | None = None,
    micro_batch: int = 1,
    predicted_frames: int | None = None,
    mfu: float = 0.4,
    peak_tflops: float = 989.0,
    device: str = "gpu",
    dtype: str = "fp32",
) -> Estimate:
    """Memory per GPU for every ZeRO stage/offload choice and tokens/s at the stated MFU.

    ``seq_len`` defaults to the config's window (conditioning + max_frames frames);
    ``predicted_frames`` (default: all) is how many frames carry the loss, which sets the size of
    the logits. ``device="cpu"``: per rank (process) training on CPUs, host memory included
    (``gpus_per_node`` = ranks per node), with params and grads in ``dtype`` ("fp32", or "bf16" for
    bf16-mixed; a GPU run is always bf16-mixed)."""
    _check_inputs(nodes, gpus_per_node, micro_batch, mfu, device, dtype)
    seq_len = cfg.max_seq_len if seq_len is None else seq_len
    if seq_len < 1:
        raise InputError(f"seq-len must be >= 1, got {seq_len}")
    predicted = (
        seq_len
        if predicted_frames is None
        else min(seq_len, predicted_frames * cfg.tokens_per_frame)
    )
    counts, n_gpus = count_params(cfg), nodes * gpus_per_node
    element = DTYPE_BYTES[dtype] if device == "cpu" else 2
    act = activation_bytes(
        cfg, seq_len, micro_batch, predicted, checkpointing=False, element_bytes=element
    )
    act_ckpt = activation_bytes(
        cfg, seq_len, micro_batch, predicted, checkpointing=True, element_bytes=element
    )
    rows = [
        _memory_row(stage, offload, counts, nodes, n_gpus, device, element, act, act_ckpt)
        for stage, offload in LAYOUTS
    ]
    fpt = flops_per_token(cfg, seq_len)
    per_gpu = mfu * peak_tflops * 1e12 / fpt
    return Estimate(
        counts.total,
        counts.largest_layer,
        nodes,
        gpus_per_node,
        seq_len,
        micro_batch,
        predicted,
        fpt,
        mfu,
        peak_tflops,
        per_gpu,
        per_gpu * n_gpus,
        rows,
        device,
        dtype if device == "cpu" else "bf16",
    )


def _check_inputs(
    nodes: int, gpus_per_node: int, micro_batch: int, mfu: float, device: str, dtype: str
) -> None:
    if nodes < 1 or gpus_per_node < 1 or micro_batch < 1:
        raise InputError("nodes, gpus-per-node and micro-batch must be >= 1")
    if not 0 < mfu <= 1:
        raise InputError(f"mfu must be in (0, 1], got {mfu}")
    if device not in DEVICES:
        raise InputError(f"device must be one of {DEVICES}, got {device!r}")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"dtype must be one of {tuple(DTYPE_BYTES)}, got {dtype!r}")


def _memory_row(
    stage: int,
    offload: str,
    counts: ParamCounts,
    nodes: int,
    n_gpus: int,
    device: str,
    element: int,
    act: int,
    act_ckpt: int,
) -> MemoryRow:
    """Memory per rank of one ZeRO stage/offload layout."""
    buffers = bucket_bytes(stage, offload, element)
    if device == "cpu":
        parts = cpu_model_state_bytes(
            counts.total, counts.largest_layer, n_gpus, stage, offload, element
        )
        return MemoryRow(
            stage,
            offload,
            *parts[:3],
            act,
            act_ckpt,
            0,
            step_scratch=parts[3],
            buffers=buffers,
        )
    params, grads, optimizer = model_state_bytes(
        counts.total, counts.largest_layer, n_gpus, stage, offload
    )
    host_bytes_per_param = {
        "none": 0,
        "optimizer": BYTES_FP32_GRAD + BYTES_FP32_MASTER + BYTES_ADAM,
        "optimizer+params": BYTES_FP32_GRAD + BYTES_FP32_MASTER + BYTES_ADAM + BYTES_BF16_PARAM,
    }[offload]
    cpu = int(host_bytes_per_param * counts.total / nodes * OFFLOAD_CPU_BUFFER)
    return MemoryRow(stage, offload, params, grads, optimizer, act, act_ckpt, cpu, buffers=buffers)


def format_table(est: Estimate, name: str = "model", gpu_mem_gib: float = 80.0) -> str:
    """A plain-text table (readable in logs, pasteable into the README)."""
    n_gpus = est.nodes * est.gpus_per_node
    cpu = est.device == "cpu"
    unit = "rank" if cpu else "GPU"
    lines = [
        f"{name}: {est.n_params / 1e9:.3f}B params (largest layer {est.largest_layer / 1e6:.0f}M), "
        f"{est.nodes} node(s) x {est.gpus_per_node} {unit}(s) = {n_gpus} {unit}s, seq_len {est.seq_len}, "
        f"micro-batch {est.micro_batch}",
        f"memory per rank in GiB, training on CPUs ({est.dtype} params/grads/activations, fp32 Adam states, "
        "host memory included); "
        "total = model states + optimizer-step scratch + buckets + activations"
        if cpu
        else "memory per GPU in GiB (bf16 params/grads, fp32 Adam states); "
        "total = model states + communication buckets + activations",
        f"{'ZeRO':>4} {'offload':<16} {'params':>7} {'grads':>7} {'optim':>7} "
        + (f"{'scratch':>7} " if cpu else "")
        + f"{'buckets':>7} "
        + f"{'act':>7} {'act+ckpt':>8} {'total':>7} {'tot+ckpt':>8} "
        + (f" fits {gpu_mem_gib:g} GiB" if cpu else f"{'CPU/node':>8}  fits {gpu_mem_gib:g} GiB"),
    ]
    for r in est.rows:
        fits = (
            "yes"
            if r.total <= gpu_mem_gib * GiB
            else ("with ckpt" if r.total_ckpt <= gpu_mem_gib * GiB else "no")
        )
        lines.append(
            f"{r.stage:>4} {r.offload:<16} {r.params / GiB:7.2f} {r.grads / GiB:7.2f} {r.optimizer / GiB:7.2f} "
            + (f"{r.step_scratch / GiB:7.2f} " if cpu else "")
            + f"{r.buffers / GiB:7.2f} "
            + f"{r.activations / GiB:7.2f} {r.activations_ckpt / GiB:8.2f} {r.total / GiB:7.2f} {r.total_ckpt / GiB:8.2f} "
            + (f" {fits}" if cpu else f"{r.cpu_per_node / GiB:8.1f}  {fits}")
        )
    if cpu:
        lines.append(
            "not counted: the runtime (Python, torch, DeepSpeed: ~0.6 GiB per rank) and allocator slack; "
            "the throughput line below assumes the --peak-tflops given"
        )
    day_tokens = est.tokens_per_s * 86400
    lines.append(
        f"throughput at MFU {est.mfu:.0%} of {est.peak_tflops:g} TFLOP/s: "
        f"{est.flops_per_token / 1e9:.1f} GFLOP/token -> {est.tokens_per_s_per_gpu:,.0f} tokens/s per GPU, "
        f"{est.tokens_per_s:,.0f} tokens/s in all ({day_tokens / 1e9:.1f}B tokens/day)"
    )
    if not cpu:
        lines.append(
            "not counted: CUDA context, fragmentation (leave 10-20% headroom); "
            "CPU/node includes DeepSpeed's 1.5x pinned-buffer factor"
        )
    return "\n".join(lines)
