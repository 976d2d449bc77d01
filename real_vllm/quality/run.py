"""``real-vllm eval``: factuality and diversity of every decoding method, side by side.

    real-vllm eval                 # the full sweep on the default model (~1 h on 2 CPU cores)
    real-vllm eval --quick         # a smoke run: a handful of prompts, a few sweep points (~2 min)
    real-vllm eval --only real,top_p,greedy --wiki 40 --trivia 100 --seeds 4
    real-vllm eval --real-thf smollm2 --real-thf /path/to/my-thf   # REAL with these THFs (a name: a shipped one)
    real-vllm eval --rescore benchmarks/results/quality_<machine>_samples.json.gz   # metrics again, no engine
    real-vllm eval --reuse benchmarks/results/quality_<machine>_samples.json.gz     # generate only new points

Two tasks (data.py says where the data comes from and how it is split):

- wiki: Wikipedia continuation, the FactualityPrompts protocol (docs/algorithms.md §2.3): the
  prompt is an article's title and opening sentence, the model continues it (plain text, up to
  64 new tokens). Factuality: NE_ER, the share of named entities of the first generated
  sentence that the article does not contain (spaCy's en_core_web_sm NER with FactualityPrompts'
  rules; a capitalisation heuristic where spaCy is not installed, named in the report: see
  metrics.py), and article match, the share of the article's later entities that the
  continuation mentions. Diversity across seeds: distinct-2/3/4, self-BLEU (sacrebleu), MiniLM
  semantic self-similarity.
- trivia: questions with accepted answers asked in the chat template (up to 32 tokens, one
  line). Accuracy: an accepted answer in the first sentence (metrics.answer_match); pass@k: any
  seed right; diversity: distinct answers across seeds, and of the wrong answers.

One vLLM engine serves the sweep, started with ``additional_config={"sampler": "sled"}`` so
that SLED and DoLa requests can be served next to plain ones; every request names its sampler
in ``SamplingParams.extra_args`` (``{"sampler": "none"}`` for plain sampling). REAL runs with
each THF of the run (every --real-thf, by default every shipped THF that fits the model): the
first THF's points are ``real decay=D``, another's ``real[NAME] decay=D``; the THF is a
server-wide setting, so each further THF's points get an engine of their own. Each sweep point is
one ``llm.generate`` call holding both tasks' prompts for every seed (greedy points: one seed,
copied). Verbalized Sampling (trivia only: a continuation is not an instruction) asks for k =
seeds candidates in one call per question and takes them as the k samples.

Writes quality[_quick]_<machine>.csv (one row per sweep point, task and split, with the NER,
sentence splitter and BLEU used), .png (the factuality-diversity Pareto plot), .md (the claims,
method by method, judged on the "test" split, with 90% bootstrap intervals over prompts, and the
run's caveats: its model, parameter count and THF) and _samples.json.gz (every text and the run's
record, which --rescore reads back) into --out, by default benchmarks/results of the checkout
this package runs from (an installed package has none: then --out is required).

Size of the default run (20 + 20 wiki prompts, 50 + 50 questions, 4 seeds, 24 points, and 3 more
REAL points of ~21k tokens each per further THF): about 400k generated tokens. Measured per point
on 2 AMD EPYC cores with nothing else running: plain sampling and EDT ~145 tok/s, vLLM's
sort-based top-p < 1 and REAL ~95 tok/s, DoLa ~36, SLED over all 30 layers ~22 (each early layer
is one more lm_head GEMM): about an hour in all, and an engine start (1.5-4 min) per further THF.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

WIKI_MAX_TOKENS = 64
TRIVIA_MAX_TOKENS = 32
VS_MAX_TEXT_CHARS = 60
VS_MAX_TOKENS = 256
MAX_MODEL_LEN = 1024


@dataclass(frozen=True)
class Point:
    """One setting of the sweep: vLLM's temperature/top_p and the plugin's extra_args."""

    method: str                      # the curve it is drawn on: greedy, top_p, temperature, edt, ...
    label: str
    temperature: float
    top_p: float = 1.0
    extra: tuple = (("sampler", "none"),)
    tasks: tuple = ("wiki", "trivia")
    also: tuple = ()                 # other curves this point belongs to
    default: bool = False            # the method's default setting
    value: float = math.nan          # the swept parameter, for the plot's labels
    thf: str | None = None           # REAL's THF (its name); a point of another THF than the run's first
                                     # has its own curve, real[NAME], and engine

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def extra_args(self) -> dict:
        return dict(self.extra)

    def curves(self) -> tuple:
        return (self.method, *self.also)

    @property
    def kind(self) -> str:
        """The method without its THF: real for real[NAME]."""
        return self.method.split("[", 1)[0]


def real_points(decays, default: float, thf: str, first: bool) -> list[Point]:
    """REAL at each decay with one THF; the run's first THF keeps the plain names (real decay=D)."""
    method = "real" if first else f"real[{thf}]"
    return [Point(method, f"{method} decay={d:g}", 1.0, extra=(("sampler", "real"), ("real_decay_temperature", d)),
                  default=d == default, value=d, thf=thf) for d in decays]


def sweep(quick: bool, seeds: int, thfs: tuple) -> list[Point]:
    """The sweep points, REAL's with each THF named in thfs (the first keeps the plain names; none:
    no REAL). Defaults (default=True) are the plugin's, from the papers; the other points were
    chosen to span each method's range, not tuned on these prompts."""
    from real_vllm.methods.real import REALConfig

    P = Point
    points = [P("greedy", "greedy", 0.0, also=("top_p", "temperature"), value=0.0)]
    top_ps = (0.5, 1.0) if quick else (0.3, 0.5, 0.7, 0.9, 1.0)
    points += [P("top_p", f"top_p={p:g}", 1.0, p, also=("temperature",) if p == 1.0 else (), value=p) for p in top_ps]
    temps = (0.7,) if quick else (0.5, 0.7)
    points += [P("temperature", f"T={t:g}", t, value=t) for t in temps]
    edts = ((1.0, 1.0),) if quick else ((1.0, 1.0), (0.7, 1.0), (1.0, 3.0))
    points += [P("edt", f"edt t0={t0:g} theta={th:g}", 1.0,
                 extra=(("sampler", "edt"), ("edt_t0", t0), ("edt_theta", th)), default=(t0, th) == (1.0, 1.0), value=t0)
               for t0, th in edts]
    real_default = REALConfig().decay_temperature
    decays = (real_default,) if quick else (2.0, 4.0, 8.0)
    for i, thf in enumerate(thfs):
        points += real_points(decays, real_default, thf, first=i == 0)
    # SLED: alpha and k around the defaults (2, 10), within the reference's advice (alpha in
    # [0.5, 3], k in {5, 10, 20}); DoLa: its plausibility cut-off around 0.1.
    sleds = ((2.0, 10),) if quick else ((2.0, 10), (0.5, 10), (1.0, 10), (3.0, 10), (2.0, 5), (2.0, 20))
    points += [P("sled", f"sled greedy alpha={a:g} k={k}", 0.0,
                 extra=(("sampler", "sled"), ("sled_alpha", a), ("sled_k", k)), default=(a, k) == (2.0, 10), value=a)
               for a, k in sleds]
    dolas = (0.1,) if quick else (0.1, 0.01, 0.3)
    points += [P("dola", "dola greedy" if r == 0.1 else f"dola greedy relative_top={r:g}", 0.0,
                 extra=(("sampler", "dola"),) + ((("dola_relative_top", r),) if r != 0.1 else ()),
                 default=r == 0.1, value=r)
               for r in dolas]
    points.append(P("vs", f"vs k={seeds} T=0.7", 0.7, tasks=("trivia",), default=True, value=0.7))
    return points


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

@dataclass
class Generated:
    """The texts of one point: {task: [[text per seed] per item]}, tokens and seconds."""

    point: Point
    texts: dict = field(default_factory=dict)
    tokens: int = 0                  # generated tokens (VS: not counted, its calls return texts)
    seconds: float = 0.0
    failures: int = 0


def request_seed(item_id: str, s: int) -> int:
    """Seed s of an item: its own noise per (item, seed), the same at every sweep point (so the
    points are compared on common random numbers); shared seeds across items would give
    different prompts the same noise and correlate their samples."""
    from real_vllm.utils import unit_hash

    return int(unit_hash(f"{item_id}#{s}", "real_vllm.quality.seed") * 2 ** 31)


def _params(point: Point, seed: int | None, max_tokens: int, stop=None):
    from vllm import SamplingParams

    return SamplingParams(temperature=point.temperature, top_p=point.top_p, max_tokens=max_tokens,
                          seed=None if point.greedy else seed, stop=stop, extra_args=point.extra_args)


def generate_point(llm, point: Point, wiki, trivia, chat_ids, seeds: int) -> Generated:
    from vllm.inputs import TokensPrompt

    from real_vllm import verbalized as vs

    out = Generated(point)
    start = time.perf_counter()
    if point.method == "vs":
        dists = vs.generate_offline_many(
            llm, [t.question for t in trivia], seeds=[request_seed(t.id, 0) for t in trivia], method="standard", k=seeds,
            temperature=point.temperature, top_p=point.top_p, max_tokens=VS_MAX_TOKENS,
            max_text_chars=VS_MAX_TEXT_CHARS, sampler_args=point.extra_args, errors="keep", use_tqdm=True)
        out.texts["trivia"] = []
        for dist in dists:
            if isinstance(dist, vs.VSParseError):
                out.failures += 1
                out.texts["trivia"].append([""] * seeds)
            else:
                out.texts["trivia"].append(list(dist.texts[:seeds]))
        out.seconds = time.perf_counter() - start
        return out
    n_seeds = 1 if point.greedy else seeds
    prompts, params, where = [], [], []
    tokenizer = llm.get_tokenizer()
    if "wiki" in point.tasks:
        for i, w in enumerate(wiki):
            ids = tokenizer(w.prompt, add_special_tokens=False)["input_ids"]
            for s in range(n_seeds):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(_params(point, request_seed(w.id, s), WIKI_MAX_TOKENS))
                where.append(("wiki", i))
    if "trivia" in point.tasks:
        for i, (t, ids) in enumerate(zip(trivia, chat_ids)):
            for s in range(n_seeds):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(_params(point, request_seed(t.id, s), TRIVIA_MAX_TOKENS, stop=["\n"]))
                where.append(("trivia", i))
    outputs = llm.generate(prompts, params, use_tqdm=True)
    out.seconds = time.perf_counter() - start
    sizes = {"wiki": len(wiki), "trivia": len(trivia)}
    for task in point.tasks:
        out.texts[task] = [[] for _ in range(sizes[task])]
    for (task, i), o in zip(where, outputs):
        out.texts[task][i].append(o.outputs[0].text)
        out.tokens += len(o.outputs[0].token_ids)
    if point.greedy:  # one seed, copied: the diversity metrics see `seeds` identical samples
        for task in point.tasks:
            out.texts[task] = [texts * seeds for texts in out.texts[task]]
    return out


def chat_prompt_ids(llm, questions: list[str]) -> list[list[int]]:
    tokenizer = llm.get_tokenizer()
    ids = []
    for q in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def start_engine(model: str, sled_layers: str | None, real_thf: str | os.PathLike | None, max_num_seqs: int):
    os.environ.pop("TRITON_INTERPRET", None)  # Triton's interpreter must be off in the engine
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from vllm import LLM

    config = {"sampler": "sled"}
    if sled_layers:
        config["sled_layers"] = sled_layers
    if real_thf:
        config["real_thf"] = os.path.abspath(real_thf)
    # No chunked prefill: vLLM 0.32's CPU runner crashes on seeded requests whose prefill is
    # split across steps; the batch budget must then hold a whole prompt.
    return LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN, seed=0,
               enable_chunked_prefill=False, max_num_batched_tokens=8 * MAX_MODEL_LEN, max_num_seqs=max_num_seqs,
               additional_config=config)


def parameter_count(model_dir: str) -> int | None:
    """The parameters in a model folder's safetensors files (their headers only), None without any."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                total += math.prod(f.get_slice(name).get_shape())
    return total


def thf_record(path: Path) -> dict:
    """What the report says of a THF: {"path" (in the package when shipped), "shipped", "members"}."""
    from real_vllm.thf.model import read_config
    from real_vllm.thf.runtime import SHIPPED_CHECKPOINT

    path = Path(path).resolve()
    shipped = path.parent == SHIPPED_CHECKPOINT.parent.resolve()
    return {"path": "real_vllm/thf/checkpoints/" + path.name if shipped else str(path), "shipped": shipped,
            "members": list(read_config(path).members)}


def run_thfs(model: str, specs: list[str] | None) -> list[dict]:
    """REAL's THFs in this run, in order ({"name", "folder", "record"}; the first keeps the plain
    point names): each --real-thf (a folder or a shipped THF's name; each must fit the model, else
    the run stops here), by default the THF the engine would serve and then every other shipped one,
    those that fit. Their names (folder names) must differ: they name the points."""
    from real_vllm.real_thf import served_thf
    from real_vllm.thf.runtime import checkpoint_path, resolve_checkpoint, shipped_checkpoints

    if specs:
        try:
            candidates = [(spec, checkpoint_path(spec)) for spec in specs]
        except ValueError as e:
            sys.exit(f"real-vllm eval: --real-thf: {e}")
    else:
        default, _ = resolve_checkpoint(None)
        shipped = list(shipped_checkpoints().values())
        candidates = [(None, p) for p in ([default] if default else [])
                      + [p for p in shipped if default is None or p.resolve() != default.resolve()]]
    thfs = []
    for spec, folder in candidates:
        try:
            fits = served_thf(model, folder) is not None
        except (OSError, ValueError) as e:
            if spec:
                sys.exit(f"real-vllm eval: --real-thf {spec}: cannot load its tokenizer ({e})")
            fits = False
        if not fits:
            if spec:
                sys.exit(f"real-vllm eval: --real-thf {spec}: its tokenizer is not the model's")
            continue
        name = folder.resolve().name
        if any(t["name"] == name for t in thfs):
            sys.exit(f"real-vllm eval: two THFs named {name!r} (the folder name names the points): rename one")
        thfs.append({"name": name, "folder": folder.resolve(), "record": thf_record(folder)})
    return thfs


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def checkout_results() -> Path | None:
    """benchmarks/results of the checkout this package runs from, when it is one (an installed
    package has no benchmarks/ beside it: then --out is required)."""
    root = Path(__file__).resolve().parents[2]
    return root / "benchmarks" / "results" if (root / "benchmarks").is_dir() and (root / "setup.py").is_file() else None


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="real-vllm eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2+2 wiki prompts, 4+4 questions, 2 seeds, 9 points")
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--wiki", type=int, help="wiki prompts per split (tune, test); default 20, quick 2")
    parser.add_argument("--trivia", type=int, help="trivia questions per split; default 50, quick 4")
    parser.add_argument("--seeds", type=int, help="samples per prompt; default 4, quick 2 (VS: k)")
    parser.add_argument("--only", help="comma-separated methods or point labels to run (default: all)")
    parser.add_argument("--sled-layers", help="early layers SLED reads (engine setting): all (default), every:K, 0,8,16")
    parser.add_argument("--real-thf", action="append", metavar="THF",
                        help="a THF for REAL: a checkpoint folder or a shipped THF's name; repeat it to compare "
                        "THFs (each one more engine; default: every shipped THF that fits the model, the "
                        "served default first)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results of the checkout this package "
                        "runs from; required when the package is installed outside a checkout)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="engine batch size (default 256)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--rescore", metavar="SAMPLES", help="measure and report the texts of an earlier run "
                        "(its _samples.json.gz) again, without an engine")
    parser.add_argument("--reuse", metavar="SAMPLES", help="take the texts of the sweep points an earlier run "
                        "(its _samples.json.gz, same prompts, seeds and engine settings) already made; generate the rest")
    args = parser.parse_args(argv)
    args.wiki = args.wiki if args.wiki is not None else (2 if args.quick else 20)
    args.trivia = args.trivia if args.trivia is not None else (4 if args.quick else 50)
    args.seeds = args.seeds if args.seeds is not None else (2 if args.quick else 4)
    if args.seeds < 2:
        parser.error(f"--seeds must be >= 2 (diversity needs pairs), got {args.seeds}")
    if args.wiki < 1 or args.trivia < 1:
        parser.error("--wiki and --trivia must be >= 1")
    if args.rescore and args.reuse:
        parser.error("--rescore and --reuse exclude each other (--rescore generates nothing)")
    return args


def _point_from_json(d: dict) -> Point:
    return Point(**{**d, "extra": tuple(tuple(x) for x in d["extra"]), "tasks": tuple(d["tasks"]), "also": tuple(d["also"])})


# Runs saved before the engine settings were recorded used these.
DEFAULT_ENGINE = {"sled_layers": None}


def load_samples(path: str, data):
    """(args overrides, wiki, trivia, results, timing) from a _samples.json.gz of an earlier run."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        saved = json.load(f)
    wiki, trivia = data.wiki_prompts(saved["wiki_per_split"]), data.trivia_items(saved["trivia_per_split"])
    if [w.id for w in wiki] != [w["id"] for w in saved["wiki"]] or [t.id for t in trivia] != [t["id"] for t in saved["trivia"]]:
        sys.exit(f"real-vllm eval --rescore: the prompts of {path} are not those the installed data gives")
    results = [Generated(_point_from_json(g["point"]), g["texts"], g["tokens"], g["seconds"], g["failures"])
               for g in saved["points"]]
    if saved.get("real_thf"):  # runs saved before points named their THF had one
        name = Path(saved["real_thf"]["path"]).name
        for g in results:
            if g.point.kind == "real" and g.point.thf is None:
                g.point = dataclasses.replace(g.point, thf=name)
    return saved, wiki, trivia, results


def _point_key(point: Point) -> str:
    """A point's settings, its THF left out (runs saved before points named their THF match; a
    THF's points differ by name, and reuse checks the THF's folder on its own)."""
    settings = dataclasses.asdict(point)
    del settings["thf"]
    return json.dumps(settings, sort_keys=True)


def saved_thf_path(saved: dict, point: Point) -> str | None:
    """The THF folder (as recorded) a REAL point of a saved run ran with; a run saved before points
    named their THF had one, its "real_thf"."""
    thfs = saved.get("real_thfs")
    if thfs is None:
        return (saved.get("real_thf") or {}).get("path")
    return thfs.get(point.thf, {}).get("path")


def reusable_points(path: str, data, args, model_name: str, engine: dict, points: list[Point],
                    thfs: list[dict]) -> dict[str, Generated]:
    """The points of an earlier run that this one may take as they are, by their settings: the
    run must have had the same model, prompts, seeds and engine settings (else exit, saying which);
    a REAL point only when its THF is the same folder (else it is generated again, saying so)."""
    if not os.path.exists(path):
        sys.exit(f"real-vllm eval --reuse: no file {path}")
    saved, _, _, results = load_samples(path, data)
    theirs_engine = {k: saved.get("engine", DEFAULT_ENGINE).get(k) for k in engine}
    for what, theirs, ours in (("model", saved["model"], model_name), ("seeds", saved["seeds"], args.seeds),
                               ("wiki prompts per split", saved["wiki_per_split"], args.wiki),
                               ("questions per split", saved["trivia_per_split"], args.trivia),
                               ("engine settings", theirs_engine, engine)):
        if theirs != ours:
            sys.exit(f"real-vllm eval --reuse: {path} was made with {what} {theirs!r}, this run has {ours!r}")
    made = {_point_key(g.point): g for g in results}
    thf_paths = {t["name"]: t["record"]["path"] for t in thfs}
    done = {}
    for p in points:
        g = made.get(_point_key(p))
        if g is None:
            continue
        if p.kind == "real" and saved_thf_path(saved, g.point) != thf_paths[p.thf]:
            print(f"{p.label}: generated again ({path} made it with the THF {saved_thf_path(saved, g.point)}, "
                  f"this run has {thf_paths[p.thf]})", file=sys.stderr)
            continue
        done[_point_key(p)] = dataclasses.replace(g, point=p)  # this run's point: it names its THF
    return done


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from real_vllm.assets import DEFAULT_MODEL_NAME, default_model_dir
    from real_vllm.quality import data, measure, render
    from real_vllm.quality.metrics import text_tools

    from real_vllm.utils import machine_name, write_csv

    results_dir = checkout_results()
    if results_dir is None and not args.out:
        sys.exit("real-vllm eval: not running from a checkout (no benchmarks/ beside the package): pass --out DIR")
    machine = machine_name()
    out_dir = Path(args.out) if args.out else results_dir

    if args.rescore:
        saved, wiki, trivia, results = load_samples(args.rescore, data)
        model_name, machine, timing = saved["model"], saved["machine"], saved["timing"]
        model_record = {k: saved.get(k) for k in ("model_parameters", "real_thf", "real_thfs")}
        args.seeds, args.quick, args.wiki, args.trivia = saved["seeds"], saved["quick"], saved["wiki_per_split"], saved["trivia_per_split"]
        points = [g.point for g in results]
    else:
        model = args.model or str(default_model_dir())
        model_name = DEFAULT_MODEL_NAME if not args.model else os.path.basename(os.path.normpath(model))
        thfs = run_thfs(model, args.real_thf)
        if not thfs:
            print("REAL skipped: no THF fits this model (pass --real-thf PATH)", file=sys.stderr)
        points = sweep(args.quick, args.seeds, tuple(t["name"] for t in thfs))
        model_record = {"model_parameters": parameter_count(model), "real_thf": thfs[0]["record"] if thfs else None,
                        "real_thfs": {t["name"]: t["record"] for t in thfs}}
        if args.only:
            wanted = {w.strip() for w in args.only.split(",") if w.strip()}
            points = [p for p in points if p.method in wanted or p.kind in wanted or p.label in wanted]
            if not points:
                sys.exit(f"real-vllm eval: --only {args.only!r} matches no sweep point")
        wiki = data.wiki_prompts(args.wiki)
        trivia = data.trivia_items(args.trivia)
        engine = {"sled_layers": args.sled_layers}
        done = reusable_points(args.reuse, data, args, model_name, engine, points, thfs) if args.reuse else {}
        todo = [p for p in points if _point_key(p) not in done]
        # One engine per THF (a server-wide setting): the points of the run's first THF and those
        # without one share the first; each other THF's points get their own.
        first = thfs[0]["name"] if thfs else None
        groups: dict = {}
        for p in todo:
            groups.setdefault(p.thf or first, []).append(p)
        folders = {t["name"]: t["folder"] for t in thfs}
        sampled = sum(1 for p in todo if not p.greedy and p.method != "vs")
        print(f"{model_name}: {len(todo)} sweep points to generate ({sampled} sampled x {args.seeds} seeds)"
              + (f", {len(points) - len(todo)} taken from {args.reuse}" if args.reuse else "")
              + f", {len(wiki)} wiki prompts x {WIKI_MAX_TOKENS} tokens, {len(trivia)} questions x <= "
              f"{TRIVIA_MAX_TOKENS} tokens"
              + (f", {len(groups)} engines (one per THF)" if len(groups) > 1 else ""), file=sys.stderr)
        generated: dict[str, Generated] = {}
        startup = 0.0
        with tqdm(total=len(todo), desc="sweep points", unit="point", file=sys.stderr) as bar:
            for thf, group in groups.items():
                started = time.perf_counter()
                if thf is not None:
                    tqdm.write(f"== engine with the THF {thf}", file=sys.stderr)
                llm = start_engine(model, args.sled_layers, folders.get(thf), args.max_num_seqs)
                startup += time.perf_counter() - started
                try:
                    chat_ids = chat_prompt_ids(llm, [t.question for t in trivia])
                    for point in group:
                        tqdm.write(f"-- {point.label}", file=sys.stderr)
                        generated[_point_key(point)] = generate_point(llm, point, wiki, trivia, chat_ids, args.seeds)
                        bar.update()
                finally:
                    llm.llm_engine.engine_core.shutdown()
                    del llm
                    gc.collect()
        results = [generated.get(_point_key(p)) or done[_point_key(p)] for p in points]
        # Generation time of every point, reused ones included (each Generated keeps its seconds).
        timing = {"startup_s": startup, "engines": len(groups), "generation_s": sum(g.seconds for g in results),
                  "reused_points": len(points) - len(todo)}

    stem = f"quality{'_quick' if args.quick else ''}_{machine}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.rescore:  # the texts first: a failure while measuring must not lose them
        with gzip.open(out_dir / f"{stem}_samples.json.gz", "wt", encoding="utf-8") as f:
            json.dump({
                "model": model_name, "machine": machine, "seeds": args.seeds, "quick": args.quick,
                "wiki_per_split": args.wiki, "trivia_per_split": args.trivia, "timing": timing, "engine": engine,
                **model_record,
                "wiki": [{"id": w.id, "split": w.split, "prompt": w.prompt} for w in wiki],
                "trivia": [{"id": t.id, "split": t.split, "question": t.question, "answers": t.answers} for t in trivia],
                "points": [{"point": dataclasses.asdict(g.point), "texts": g.texts, "tokens": g.tokens,
                            "seconds": g.seconds, "failures": g.failures} for g in results],
            }, f, ensure_ascii=False)
    measure_start = time.perf_counter()
    rows, stats = measure.measure(results, wiki, trivia, args.seeds, model_name, machine, args.bootstrap)
    write_csv(out_dir / f"{stem}.csv", rows)
    render.plot(rows, out_dir / f"{stem}.png", f"{model_name}: factuality vs diversity ({machine})")
    timing = {**timing, "measure_s": time.perf_counter() - measure_start}
    record = {"model": model_name, "machine": machine, "seeds": args.seeds, "quick": args.quick, **model_record}
    summary = render.summary(rows, stats, points, record, text_tools(), timing)
    (out_dir / f"{stem}.md").write_text(summary)
    print(summary)
    print(f"wrote {out_dir / stem}.csv, .png, .md" + ("" if args.rescore else " and _samples.json.gz")
          + f" (engine start {timing['startup_s']:.0f} s, generation {timing['generation_s']:.0f} s, "
          f"metrics {timing['measure_s']:.0f} s)")


if __name__ == "__main__":
    main()
