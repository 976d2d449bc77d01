"""`real-vllm thf ...`: collect entropies, train and evaluate the THF model of REAL sampling.

REAL: arXiv 2406.07735. The pipeline, for a family of causal LMs that share one tokenizer:

    real-vllm thf collect --family M1 M2 ... --corpus FILES...|wiki --out DATA
    real-vllm thf train DATA --out CKPT [--curve poly|exp|logistic] [--epochs 3] [--attention sliding]
    real-vllm thf eval CKPT DATA [--plot PATH]

A family member is a model folder, a Hugging Face model name (e.g. EleutherAI/pythia-70m-deduped,
fetched once into the hub cache) or `default` (the embedded SmolLM2-135M-Instruct folder). `--corpus
wiki` is the training part of the offline Wikipedia summaries (corpus.wiki_corpus). Each step
resumes when rerun with the same arguments.

One model's own depth is a family too (real_vllm/thf/lens.py): train its tuned lens, then collect
the lens layers and the model itself as members:

    real-vllm thf lens MODEL [--out LENS_DIR] [--layers every:5] [--tokens 8192]
    real-vllm thf collect --family depth:MODEL[:LENS_DIR] --corpus wiki --out DATA
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="real-vllm thf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="per-token entropies of a model family on a corpus")
    c.add_argument("--family", nargs="+", required=True, metavar="MODEL_DIR",
                   help="Hugging Face causal-LM folders or model names (fetched into the hub cache) sharing one "
                        "tokenizer (`default` = the embedded model), "
                        "or depth:MODEL[:LENS_DIR]: the model's tuned-lens layers and the model itself")
    c.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="text (.txt, blank-line separated), .json or .jsonl files, or `wiki`")
    c.add_argument("--out", required=True, help="output data folder (rerun to resume)")
    c.add_argument("--block", type=int, default=1024, help="tokens per block (default 1024, the paper's)")
    c.add_argument("--batch-size", type=int, default=2, help="blocks per forward pass (default 2)")
    c.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="model dtype (default float32 on CPU, bfloat16 on GPU)")
    c.add_argument("--max-tokens", type=int, default=None, help="cap on corpus tokens (whole documents)")
    c.add_argument("--max-train-blocks", type=int, default=None,
                   help="keep the first N training blocks (the valid split stays whole)")
    c.add_argument("--valid-fraction", type=float, default=0.05, help="held-out share of documents (default 0.05)")

    lens = sub.add_parser("lens", help="train a model's tuned lens (its depth family for collect)")
    lens.add_argument("model", help="Hugging Face causal-LM folder or model name (`default` = the embedded model)")
    lens.add_argument("--out", default=None, help="lens folder (default: a folder per model in real_vllm's cache, "
                                                  "where depth:MODEL looks)")
    lens.add_argument("--layers", default="every:5", help="every:K (default every:5), all, or l1,l2,...")
    lens.add_argument("--tokens", type=int, default=8192, help="training tokens (default 8192)")
    lens.add_argument("--valid-tokens", type=int, default=2048, help="held-out tokens for the report (default 2048)")
    lens.add_argument("--block", type=int, default=512, help="tokens per block and step (default 512)")
    lens.add_argument("--lr", type=float, default=1e-4, help="Adam's peak learning rate (default 1e-4)")
    lens.add_argument("--init", choices=["lstsq", "identity"], default="lstsq",
                      help="translators' start: least-squares fit (default) or identity (the paper's)")
    lens.add_argument("--corpus", nargs="+", default=["wiki"], metavar="FILE",
                      help="text, .json or .jsonl files, or `wiki` (default)")
    lens.add_argument("--device", default=None)

    t = sub.add_parser("train", help="train a THF checkpoint on a data folder")
    t.add_argument("data", help="data folder from `thf collect`")
    t.add_argument("--out", required=True, help="checkpoint folder (rerun to resume after an epoch)")
    t.add_argument("--curve", choices=["poly", "exp", "logistic"], default="poly")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=8, help="blocks per step (default 8)")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--warmup-steps", type=int, default=100)
    t.add_argument("--backbone", type=json.loads, default=None, metavar="JSON",
                   help='LlamaConfig overrides, e.g. \'{"num_hidden_layers": 6}\'')
    t.add_argument("--embedding-rank", type=int, default=48, help="low-rank input embedding; 0 = plain embedding")
    t.add_argument("--attention", choices=["block", "sliding"], default="block",
                   help="block: causal over each block, served on the last --window tokens recomputed every step "
                        "(default); sliding: every layer sees the last --window positions, in training and "
                        "serving, so serving keeps a per-request key/value cache and computes one token a step")
    t.add_argument("--window", type=int, default=40, help="THF window in tokens (default 40)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)

    e = sub.add_parser("eval", help="held-out RMSE and distributions of c, d and the threshold")
    e.add_argument("ckpt", help="THF checkpoint folder")
    e.add_argument("data", help="data folder from `thf collect` (same tokenizer)")
    e.add_argument("--split", choices=["valid", "train"], default="valid")
    e.add_argument("--plot", default=None, help="write a PNG here")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default=None)
    return parser


def _model_dir(name: str) -> str:
    """A model folder from `default` (the embedded model), a folder or a Hugging Face model name."""
    if name == "default":
        from real_vllm.assets import default_model_dir

        return str(default_model_dir())
    from real_vllm.thf.collect import model_folder

    try:
        return str(model_folder(name))
    except FileNotFoundError as exc:
        raise SystemExit(f"real-vllm thf: {exc}") from None


def _corpus(files: list[str], command: str):
    from real_vllm.thf.corpus import wiki_corpus

    if files == ["wiki"]:
        return wiki_corpus("train")
    if "wiki" in files:
        raise SystemExit(f"real-vllm thf {command}: `wiki` cannot be mixed with corpus files")
    return files


def _family(entries: list[str]) -> list:
    """Folders or Hugging Face names (`default` = the embedded model) as HFCausalLM members,
    depth:MODEL[:LENS_DIR] as the model's depth family."""
    from real_vllm.thf.collect import hf_family

    family, folders = [], []
    for entry in entries:
        if entry.startswith("depth:"):
            from real_vllm.thf.lens import depth_family

            model, _, lens_dir = entry[len("depth:"):].partition(":")
            if not model:
                raise SystemExit("real-vllm thf collect: --family depth:MODEL[:LENS_DIR] needs a MODEL")
            try:
                family.extend(depth_family(_model_dir(model), lens_dir or None))
            except (FileNotFoundError, ValueError) as exc:
                raise SystemExit(f"real-vllm thf collect: --family {entry}: {exc}") from None
        else:
            folders.append(_model_dir(entry) if entry == "default" else entry)
    try:
        return hf_family(folders) + family  # a Hugging Face name is fetched here
    except FileNotFoundError as exc:
        raise SystemExit(f"real-vllm thf collect: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "collect":
        from real_vllm.thf.collect import collect, mean_entropies

        family = _family(args.family)
        out = collect(family, _corpus(args.corpus, "collect"), args.out, block=args.block, batch_size=args.batch_size,
                      device=args.device, dtype=args.dtype, max_tokens=args.max_tokens,
                      max_train_blocks=args.max_train_blocks, valid_fraction=args.valid_fraction)
        from real_vllm.thf.dataset import read_meta

        meta = read_meta(out)
        falls = mean_entropies(out, "valid")
        print(json.dumps({"out": str(out), "members": [{k: m[k] for k in ("name", "s")} for m in meta["members"]],
                          "splits": meta["splits"], "valid_mean_entropy": falls}, indent=2))
    elif args.command == "lens":
        from real_vllm.thf.lens import train_lens

        config = train_lens(_model_dir(args.model), args.out, layers=args.layers, tokens=args.tokens,
                            valid_tokens=args.valid_tokens, block=args.block, lr=args.lr, init=args.init,
                            corpus=_corpus(args.corpus, "lens"), device=args.device)
        print(json.dumps({"model": config["model"]["path"], "layers": config["layers"],
                          "wall_seconds": config["wall_seconds"], "report": config["report"]}, indent=2))
    elif args.command == "train":
        from real_vllm.thf.train import train

        record = train(args.data, args.out, curve=args.curve, epochs=args.epochs, lr=args.lr,
                       batch_size=args.batch_size, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                       backbone=args.backbone, embedding_rank=args.embedding_rank or None, seed=args.seed,
                       device=args.device, attention=args.attention, window=args.window)
        print(json.dumps({"checkpoint": args.out, "final_valid": record["final_valid"],
                          "parameters": record["parameters"]}, indent=2))
    else:
        from real_vllm.thf.evaluate import evaluate

        print(json.dumps(evaluate(args.ckpt, args.data, split=args.split, plot=args.plot,
                                  batch_size=args.batch_size, device=args.device), indent=2))


if __name__ == "__main__":
    main()
