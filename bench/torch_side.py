"""transformers' PyTorch BertForPreTraining, bench/compare_train_step.py's peer, in a process of its own.

`TorchSide` is the peer's pretraining step: the same sizes, batch and recipe as flaxbert's, eager,
`torch.set_num_threads(os.cpu_count())`. `TorchWorker` runs it in a child process that
compare_train_step.py drives over pipes, one round at a time, so that the alternation of rounds is
unchanged while each framework runs under its own process settings: the benchmark's process has
glibc's huge-page malloc (`flaxbert.launch`, as the `flaxbert` command), the child has the
environment without it, as torch is run by default. (Measured in one process, the huge pages made
torch's steps slower: BERT-small 4.08 against 5.6-5.9 seq/s on this 2-core CPU.)

  python bench/torch_side.py   # the child: JSON lines on stdin (init, run, close), replies on stdout
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from flaxbert import launch  # noqa: E402
from flaxbert.models.config import BertConfig  # noqa: E402


class TorchSide:
  """transformers' BertForPreTraining with the same sizes, inputs and recipe, eager PyTorch."""

  def __init__(self, cfg: BertConfig, size: str, data: dict, device: str, bf16: bool, seed: int):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act="gelu", hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps)
    self.device, self.bf16 = torch.device(device), bf16
    self.model = transformers.BertForPreTraining(config).to(self.device)
    self.model.train()
    self.attn_implementation = self.model.config._attn_implementation  # pylint: disable=protected-access
    self.params = sum(p.numel() for p in self.model.parameters())
    from bench.compare_train_step import optimizer_config  # pylint: disable=import-outside-toplevel
    opt = optimizer_config(size)
    named = list(self.model.named_parameters())
    no_decay = [p for n, p in named if "LayerNorm" in n or "bias" in n]
    decay = [p for n, p in named if not ("LayerNorm" in n or "bias" in n)]
    self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=opt.learning_rate,
                                 betas=(opt.adam_b1, opt.adam_b2), eps=opt.adam_eps)
    warmup, total = opt.warmup_steps, opt.num_train_steps
    self.schedule = torch.optim.lr_scheduler.LambdaLR(
        self.opt, lambda s: s / warmup if s < warmup else max(0.0, 1.0 - s / total))
    self.max_grad_norm = opt.max_grad_norm
    labels = np.full(data["input_ids"].shape, -100, np.int64)
    rows = np.arange(labels.shape[0])[:, None]
    labels[rows, data["masked_lm_positions"]] = np.where(data["masked_lm_weights"] > 0, data["masked_lm_ids"], -100)
    as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(self.device)  # noqa: E731
    self.inputs = {"input_ids": as_tensor(data["input_ids"]), "attention_mask": as_tensor(data["input_mask"]),
                   "token_type_ids": as_tensor(data["segment_ids"]), "labels": as_tensor(labels),
                   "next_sentence_label": as_tensor(data["next_sentence_labels"])}
    start = time.perf_counter()
    self.first_loss = self.run(1)[1]
    self.time_to_first_step_s = time.perf_counter() - start

  def _sync(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def run(self, steps: int) -> tuple[list[float], float]:
    times, loss = [], None
    for _ in range(steps):
      start = time.perf_counter()
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
        loss = self.model(**self.inputs).loss
      loss.backward()
      if self.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
      self.opt.step()
      self.schedule.step()
      self.opt.zero_grad(set_to_none=True)
      self._sync()
      times.append(time.perf_counter() - start)
    return times, float(loss.detach().float().cpu())


class TorchWorker:
  """A TorchSide in a child process without huge-page malloc: `run(steps)` -> (step times, loss)."""

  def __init__(self, size: str, batch: int, args):
    env = launch.plain_env(dict(os.environ))
    self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=REPO, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.process_info = {"glibc_tunables": env.get("GLIBC_TUNABLES", "")}
    self._send({"op": "init", "size": size, "batch": batch, "seq": args.seq, "dtype": args.dtype,
                "attention_dropout": args.attention_dropout, "predictions": args.predictions,
                "seed": args.seed, "device": args.device})

  def wait_ready(self) -> None:
    """Blocks until the child has built the model and taken its first step."""
    info = self._receive()
    self.first_loss, self.time_to_first_step_s = info["first_loss"], info["time_to_first_step_s"]
    self.params, self.attn_implementation = info["params"], info["attn_implementation"]
    self.process_info.update(info["process"])

  def run(self, steps: int) -> tuple[list[float], float]:
    self._send({"op": "run", "steps": steps})
    reply = self._receive()
    return reply["times"], reply["loss"]

  def close(self) -> None:
    self._send({"op": "close"})
    self.proc.stdin.close()
    self.proc.wait(timeout=60)

  def _send(self, message: dict) -> None:
    self.proc.stdin.write(json.dumps(message) + "\n")
    self.proc.stdin.flush()

  def _receive(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the torch process ({Path(__file__).name}) exited with {self.proc.wait()}; "
                         "its stderr is above")
    return json.loads(line)


def serve() -> None:
  """The child: builds a TorchSide on "init", runs steps on "run", exits on "close" or end of input."""
  from bench.compare_train_step import bert_config, make_batch  # pylint: disable=import-outside-toplevel
  replies = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
  torch.set_num_threads(os.cpu_count())
  side = None
  for line in sys.stdin:
    message = json.loads(line)
    if message["op"] == "init":
      if message["device"] == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as jax's default precision on GPUs
      cfg = bert_config(message["size"], message["dtype"], message["seq"], message["attention_dropout"])
      data = make_batch(message["batch"], message["seq"], cfg.vocab_size, message["predictions"], message["seed"])
      side = TorchSide(cfg, message["size"], data, message["device"], message["dtype"] == "bfloat16",
                       message["seed"])
      reply = {"first_loss": side.first_loss, "time_to_first_step_s": side.time_to_first_step_s,
               "params": side.params, "attn_implementation": side.attn_implementation,
               "process": {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                           "float32_matmul_precision": torch.get_float32_matmul_precision()}}
    elif message["op"] == "run":
      times, loss = side.run(message["steps"])
      reply = {"times": times, "loss": loss}
    else:
      break
    replies.write(json.dumps(reply) + "\n")
    replies.flush()


if __name__ == "__main__":
  serve()
