"""Batch churn, property-based, for both of real_vllm's processors together (EDT/REAL and the
early-layer SLED/DoLa one), the way vLLM drives them: random sequences of batch updates (V1:
removes with vLLM's condensing moves, adds, swaps, an add into the index a removal freed,
resumed requests that arrive with output; async placeholders in the live output lists) and of
Model Runner V2 steps (vLLM's own RequestState: slots recycled through its free list, rows in a
new order every step, draft rows), with requests of every sampler (none, edt, real, edt+real,
sled, sled+edt+real, dola+real, ...) and random parameters.

After every step each row must be its own request's transform, computed here independently:
the reference ops (real_vllm.reference) composed in the methods' order (SLED or DoLa on the
final logits and the early layers of the row's tap, then EDT, then REAL's nucleus), REAL's p_t
from a separate THF runtime's public call (THFRuntime.residual_entropy) on the window built
from this test's own record of the request's tokens (prompt + known output, drafts before the
row; for a server with --real-retokenize, the record decoded and re-tokenised whole with the
THF's tokenizer). Three servers: a THF with the served tokenizer, one with another tokenizer,
and a sliding-window THF served incrementally from its per-request key/value cache (window 6,
so that requests outgrow its 11-token receptive field within a test), whose p_t is checked
against the full sliding-window forward over the request's whole sequence (model.predict_last
on prompt + known output + drafts): joins, leaves, preemption, slot moves, drafts and async
placeholders must all leave the cache exact.

Seeded (derandomized Hypothesis, no example database, no shrinking): 40 s of CPU in all (72 s
wall on a loaded 2-core machine).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from real_vllm import reference
from real_vllm.integration import early_models
from real_vllm.integration.tap import TAP, EarlyRows
from real_vllm.integration.early_processor import EarlyLayerLogitsProcessor
from real_vllm.integration.processor import RealVllmLogitsProcessor
from real_vllm.methods.edt import MIN_SCALE
from real_vllm.thf import curves
from real_vllm.thf.model import predict_last
from real_vllm.thf.runtime import THFRuntime, right_aligned_windows
from tests.mrv2 import MRV2
from tests.thf_fixtures import build_tiny_thf

MAX_REQS, VOCAB, HIDDEN = 8, 257, 16
TAPPED, SLED_LAYERS, DOLA_LAYERS = (0, 1, 2, 3), [0, 2, 3], [1, 3]
# REAL's nucleus is compared up to this much of p_t: the processor's THF runs batched and its
# logits come from the fast ops, so p_t and the mass before each token agree with the reference
# to float32 rounding, not bit for bit. A token whose mass-before lies within TOP_P_SLACK of p_t
# may go either way; every other one must be kept or dropped as the reference says.
TOP_P_SLACK = 1e-4
# No shrinking: a failure is reported as found (with every draw), in bounded time.
SETTINGS = settings(max_examples=20, stateful_step_count=20, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])

SAMPLER_NAMES = ("none", "edt", "real", "edt+real", "sled", "sled+edt", "sled+real", "sled+edt+real",
                 "dola", "dola+edt", "dola+real", "dola+edt+real")
METHOD_ARGS = {
    "edt": st.fixed_dictionaries({"edt_t0": st.floats(0.05, 3.0), "edt_n": st.floats(0.05, 0.95),
                                  "edt_theta": st.one_of(st.just(0.0), st.floats(0.0, 4.0))}),
    # decay >= 1e9: top-p(p0), no THF forward for that row
    "real": st.fixed_dictionaries({"real_p0": st.floats(0.3, 1.0),
                                   "real_decay_temperature": st.one_of(st.floats(0.2, 4.0), st.just(1e9))}),
    "sled": st.fixed_dictionaries({"sled_alpha": st.floats(0.0, 3.0), "sled_k": st.integers(1, 40),
                                   "sled_lower_bound": st.sampled_from([-1000.0, -50.0])}),
    "dola": st.fixed_dictionaries({"dola_relative_top": st.floats(0.01, 1.0),
                                   "dola_divergence": st.sampled_from(["authors", "jsd"])}),
}


@st.composite
def request_args(draw) -> dict | None:
    """A request's extra_args (None: a plain request that names no sampler), every parameter of
    its methods given, so the expected transform reads only what the test sent."""
    sampler = draw(st.sampled_from((None, *SAMPLER_NAMES)))
    if sampler is None:
        return None
    args = {"sampler": sampler}
    for method in sampler.split("+"):
        if method in METHOD_ARGS:
            args.update(draw(METHOD_ARGS[method]))
    return args


def corpus() -> str:
    """Prose with multi-byte characters (they split across byte-level tokens) to draw token
    streams from: the cross-tokenizer path must decode real text."""
    import textwrap

    docs = [inspect.getdoc(f) for f in (textwrap.fill, inspect.signature, functools.lru_cache, dataclass)]
    extra = "Zürich — 北京: a naïve façade, 3.5 m² … déjà vu. "
    return extra + "\n\n".join(docs) + " " + extra * 3


@dataclass
class Request:
    args: dict | None
    prompt: list[int]
    stream: list[int]  # the tokens it will generate, in order
    known: list[int] = field(default_factory=list)  # output tokens the host has (this test's record)
    pending: int = 0  # V1 async: sampled tokens not yet in the live list (-1 there)
    live: list[int] = field(default_factory=list)  # V1: the output list handed to the processors

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(extra_args=dict(self.args) if self.args else None)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.args["sampler"].split("+")) if self.args and self.args["sampler"] != "none" else ()

    def next_tokens(self, k: int) -> list[int]:
        return self.stream[len(self.known):len(self.known) + k]


class Server:
    """What one server setting fixes: the THF (same or another tokenizer), the vLLM config the
    processors get, and the test's own THF runtime and tokenizers for the expected windows."""

    def __init__(self, served_dir, thf_dir, retokenize: bool):
        from transformers import AutoTokenizer

        self.served_dir, self.retokenize = served_dir, retokenize
        self.additional = {"real_thf": str(thf_dir), "real_retokenize": retokenize}
        self.hf = SimpleNamespace(**{early_models.SLED_LAYERS: SLED_LAYERS, early_models.DOLA_LAYERS: DOLA_LAYERS,
                                     early_models.SLED_NORM: False, early_models.DOLA_NORM: True})
        self.thf = THFRuntime.load(thf_dir, torch.device("cpu"))  # the test's own (no tokenizer check)
        self.served = AutoTokenizer.from_pretrained(str(served_dir))
        self.thf_tokenizer = AutoTokenizer.from_pretrained(str(thf_dir))
        self.text = corpus()
        self.starts = [i for i in range(len(self.text) - 400) if i == 0 or self.text[i - 1] == " "]

    def config(self):
        return SimpleNamespace(additional_config=dict(self.additional),
                               scheduler_config=SimpleNamespace(max_num_seqs=MAX_REQS),
                               model_config=SimpleNamespace(tokenizer=str(self.served_dir), hf_config=self.hf))

    @functools.lru_cache(maxsize=None)
    def stream(self, start: int) -> tuple[int, ...]:
        """Served token ids of the corpus from a word start on, long enough for any test."""
        text = (self.text[start:] + " " + self.text) * 2
        return tuple(self.served(text, add_special_tokens=False)["input_ids"])

    def splits_a_character(self, tokens) -> bool:
        """Whether a re-tokenising server's first feed of these tokens would end inside a
        character (a prompt, or a resumed request's prompt + output, cut between the bytes of a
        character: test_retokenizer_holds_a_split_character_after_any_first_feed)."""
        return self.retokenize and self.served.decode(list(tokens), skip_special_tokens=True,
                                                      clean_up_tokenization_spaces=False).endswith("\ufffd")

    def window(self, tokens: list[int]) -> list[int]:
        """The THF window of a sequence of served tokens, as REAL defines it: its last THF-window
        tokens; across tokenizers, those of the whole text re-tokenised (up to its last complete
        character)."""
        if self.retokenize:
            text = self.served.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            tokens = self.thf_tokenizer(text.rstrip("\ufffd"), add_special_tokens=False)["input_ids"]
        return tokens[-self.thf.window:]

    def threshold(self, tokens: list[int], p0: float, decay: float) -> torch.Tensor:
        if self.thf.config.sliding and not self.retokenize:
            # The whole sequence through the reference sliding-window forward.
            params = predict_last(self.thf.model, torch.tensor([tokens]))
            return curves.threshold(self.thf.residual_entropy_of(params), p0, decay)
        windows, lengths = right_aligned_windows([self.window(tokens)], self.thf.window)
        return curves.threshold(self.thf.residual_entropy(windows, lengths), p0, decay)


def norm(h: torch.Tensor) -> torch.Tensor:
    """The model's final norm the tap hands the processor (RMS, no weight)."""
    return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


class Step:
    """One step's inputs: the logits and the early-layer tap of its rows (as the wrapper model's
    compute_logits leaves it)."""

    def __init__(self, rows: int, gen: torch.Generator):
        self.logits = torch.randn(rows, VOCAB, generator=gen) * 3
        self.hidden = torch.randn(len(TAPPED), rows, HIDDEN, generator=gen)
        self.weight = torch.randn(VOCAB + 3, HIDDEN, generator=gen)  # vLLM pads lm_head's rows
        TAP.rows = EarlyRows(TAPPED, self.hidden, norm=norm, weight=self.weight)

    def early_logits(self, row: int, layers: list[int], normed: bool) -> torch.Tensor:
        h = self.hidden[[TAPPED.index(n) for n in layers], row]
        return (norm(h) if normed else h) @ self.weight[:VOCAB].T


# How far a float32 entropy may be from the exact one, in nats: the C++ kernel measured <= 9e-8
# against float64 on peaked rows of a few finite logits, the float32 reference about the same.
H_ROUNDING = 2e-7


def edt_sensitivity(row: torch.Tensor, n: float, theta: float) -> float:
    """|d ln T / d H| of EDT's T = t0 * n ** (theta / H) on this row, 0 where T sits at its floor.
    A near-greedy row (H -> 0: a few finite logits after DoLa's plausibility mask) turns the
    float32 rounding of H into a relative error of T, and of every logit, far above 1e-4."""
    p = row.double().softmax(-1)
    h = float(-(p[p > 0] * p[p > 0].log()).sum())
    if theta == 0 or h <= 0 or n ** (theta / h) <= MIN_SCALE:
        return 0.0
    return abs(math.log(n)) * theta / h ** 2


def check_row(server: Server, step: Step, out: torch.Tensor, row: int, req: Request, tokens: list[int], where: str):
    """``out`` (row ``row`` after both processors) against the row's request, recomputed."""
    x, args, methods = step.logits[row], req.args or {}, req.methods
    if not methods:
        assert torch.equal(out, x), f"{where}: a plain row was touched"
        return
    want = x[None]
    if "sled" in methods:
        want = reference.sled_evolve(want, step.early_logits(row, SLED_LAYERS, False)[:, None], args["sled_alpha"],
                                     args["sled_k"], args["sled_lower_bound"])
    if "dola" in methods:
        want, _ = reference.dola_contrast(want, step.early_logits(row, DOLA_LAYERS, True)[:, None],
                                          args["dola_relative_top"], args["dola_divergence"])
    rtol = 1e-4
    if "edt" in methods:
        rtol += edt_sensitivity(want[0], args["edt_n"], args["edt_theta"]) * H_ROUNDING
        want, _ = reference.apply_edt(want, args["edt_t0"], args["edt_n"], args["edt_theta"], MIN_SCALE)
    if "real" not in methods:
        torch.testing.assert_close(out, want[0], rtol=rtol, atol=1e-4, msg=lambda m: f"{where}: {m}")
        return
    p_t = server.threshold(tokens, args["real_p0"], args["real_decay_temperature"])
    narrow = reference.top_p_mask(want, (p_t - TOP_P_SLACK).reshape(1))[0].isfinite()
    wide = reference.top_p_mask(want, (p_t + TOP_P_SLACK).reshape(1))[0].isfinite()
    kept = out.isfinite()
    assert not (narrow & ~kept).any(), f"{where}: REAL dropped tokens of its nucleus (p_t {float(p_t):.5f})"
    assert not (kept & ~wide).any(), f"{where}: REAL kept tokens outside its nucleus (p_t {float(p_t):.5f})"
    torch.testing.assert_close(out[kept], want[0][kept], rtol=rtol, atol=1e-4, msg=lambda m: f"{where}: {m}")


class Churn(RuleBasedStateMachine):
    """What both runners share: the server, the requests' draws, the step's seeded inputs."""

    server: Server

    def __init__(self):
        super().__init__()
        self.gen = torch.Generator().manual_seed(0)
        self.steps = 0

    def new_request(self, data) -> Request:
        args = data.draw(request_args(), label="args")
        stream = self.server.stream(data.draw(st.sampled_from(self.server.starts), label="text start"))
        length = data.draw(st.one_of(st.integers(1, 12), st.integers(30, 120)), label="prompt length")
        req = Request(args, list(stream[:length]), list(stream[length:]))
        resumed = data.draw(st.sampled_from([0, 0, 0, 5]), label="output already generated")  # resumed
        req.known = req.next_tokens(resumed)
        req.live = list(req.known)
        return req


class V1Churn(Churn):
    """The V1 persistent batch: rows [0, n) always occupied, updates as vLLM sends them, the
    live output lists growing after every step."""

    def __init__(self):
        super().__init__()
        config = self.server.config()
        # vLLM runs the non-argmax-invariant early-layer processor first, EDT/REAL last.
        self.early = EarlyLayerLogitsProcessor(config, torch.device("cpu"), False)
        self.late = RealVllmLogitsProcessor(config, torch.device("cpu"), False)
        self.batch: list[Request] = []

    def send(self, update: BatchUpdate) -> None:
        for proc in (self.early, self.late):
            proc.update_state(update)

    @staticmethod
    def added(index: int, req: Request):
        return (index, req.params, req.prompt, req.live)

    @precondition(lambda self: len(self.batch) < MAX_REQS)
    @rule(data=st.data())
    def add(self, data):
        new = [self.new_request(data) for _ in range(data.draw(st.integers(1, MAX_REQS - len(self.batch))))]
        start = len(self.batch)
        self.batch += new
        self.send(BatchUpdate(len(self.batch), removed=[], added=[self.added(start + i, r) for i, r in enumerate(new)],
                              moved=[]))

    @precondition(lambda self: self.batch)
    @rule(data=st.data())
    def remove_and_condense(self, data):
        n = len(self.batch)
        removed = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
        keep = [i for i in range(n) if i not in removed]
        # Condense as vLLM does: the last survivors move one way into the lowest holes.
        holes = [i for i in removed if i < len(keep)]
        tail = [i for i in keep if i >= len(keep)]
        moved = [(src, hole, MoveDirectionality.UNIDIRECTIONAL) for hole, src in zip(holes, reversed(tail))]
        new_batch = [self.batch[i] if i < len(keep) else None for i in range(len(keep))]
        for src, hole, _ in moved:
            new_batch[hole] = self.batch[src]
        self.batch = new_batch
        self.send(BatchUpdate(len(self.batch), removed=removed, added=[], moved=moved))

    @precondition(lambda self: len(self.batch) >= 2)
    @rule(data=st.data())
    def swap(self, data):
        a, b = data.draw(st.lists(st.integers(0, len(self.batch) - 1), min_size=2, max_size=2, unique=True))
        self.batch[a], self.batch[b] = self.batch[b], self.batch[a]
        self.send(BatchUpdate(len(self.batch), removed=[], added=[], moved=[(a, b, MoveDirectionality.SWAP)]))

    @precondition(lambda self: self.batch)
    @rule(data=st.data())
    def replace(self, data):
        """An added request takes the index of one that left in the same update."""
        i = data.draw(st.integers(0, len(self.batch) - 1))
        self.batch[i] = self.new_request(data)
        self.send(BatchUpdate(len(self.batch), removed=[i], added=[self.added(i, self.batch[i])], moved=[]))

    @precondition(lambda self: any(req.pending < 2 for req in self.batch))
    @rule()
    def async_placeholders(self):
        """Async scheduling: steps run before the host has the tokens just sampled: vLLM's live
        lists end in -1 (one or two pending), which no window may contain."""
        for req in self.batch:
            if req.pending < 2:
                req.pending += 1
                req.live.append(-1)
        self.send(BatchUpdate(len(self.batch), removed=[], added=[], moved=[]))

    @invariant()
    def each_row_gets_its_own_transform(self):
        self.steps += 1
        self.send(None)  # vLLM's call when nothing changed
        step = Step(len(self.batch), self.gen)
        out = self.late.apply(self.early.apply(step.logits.clone()))
        assert TAP.rows is None, "the tap must be emptied every step"
        for i, req in enumerate(self.batch):
            check_row(self.server, step, out[i], i, req, req.prompt + req.known, f"V1 step {self.steps}, row {i} {req.args}")
        for req in self.batch:  # this step's token: known at once, or pending in place of the oldest pending
            token = req.next_tokens(1)[0]
            if req.pending:
                req.live[len(req.known)] = token
                req.live.append(-1)
            else:
                req.live.append(token)
            req.known.append(token)


def mrv2_as_vllm_builds_it(config) -> MRV2:
    """MRV2 with real_vllm's processors built and applied in the order vLLM's MRV2 loader
    takes them: the vllm.logits_processors entry points, in their installed order."""
    from importlib.metadata import entry_points

    mrv2 = MRV2(max_num_reqs=MAX_REQS, max_model_len=512, vocab_size=VOCAB)
    order = [e.value for e in entry_points(group="vllm.logits_processors") if e.value.startswith("real_vllm.")]
    classes = {f"{c.__module__}:{c.__name__}": c for c in (RealVllmLogitsProcessor, EarlyLayerLogitsProcessor)}
    assert sorted(order) == sorted(classes), order
    for name in order:
        mrv2.build(classes[name], config)
    return mrv2


class V2Churn(Churn):
    """Model Runner V2 (its own RequestState, tests/mrv2.py): slots recycled through its free
    list, rows mapped to slots anew each step in a new order, a request owning 1 + its drafts
    rows; the processors in the order vLLM's MRV2 loader builds them (entry points)."""

    def __init__(self):
        super().__init__()
        self.mrv2 = mrv2_as_vllm_builds_it(self.server.config())
        self.live: dict[str, Request] = {}
        self.added_count = 0

    @precondition(lambda self: len(self.live) < MAX_REQS)
    @rule(data=st.data())
    def add(self, data):
        req_id = str(self.added_count)
        self.added_count += 1
        req = self.live[req_id] = self.new_request(data)  # a recycled slot must forget its previous occupant
        self.mrv2.add_request(req_id, req.prompt, req.params, output=req.known)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        req_id = data.draw(st.sampled_from(sorted(self.live)))
        del self.live[req_id]
        self.mrv2.remove_request(req_id)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def preempt_and_resume(self, data):
        """A preempted request comes back (maybe in another slot) with its output so far."""
        req_id = data.draw(st.sampled_from(sorted(self.live)))
        req = self.live[req_id]
        self.mrv2.remove_request(req_id)
        self.mrv2.add_request(req_id, req.prompt, req.params, output=req.known)

    @invariant()
    def each_row_gets_its_own_transform(self):
        self.steps += 1
        self.mrv2.apply_staged_writes()
        ids = sorted(self.live)
        order = [ids[i] for i in torch.randperm(len(ids), generator=self.gen).tolist()]
        # 0-3 draft rows per request (the next tokens, other tokens, or -1 placeholders inside the prefill);
        # none where REAL re-tokenises (start-up refuses that with speculative decoding).
        drafts = {}
        for r in order:
            k = 0 if self.server.retokenize else (int(r) + self.steps) % 4
            drafts[r] = [-1] * k if (int(r) + self.steps) % 7 == 0 else self.live[r].next_tokens(k)
            if (int(r) + self.steps) % 3 == 1:  # drafts the verifier will reject: other tokens
                drafts[r] = [t if t < 0 else self.live[r].stream[-1 - j] for j, t in enumerate(drafts[r])]
        rows = [(r, drafts[r][:j]) for r in order for j in range(len(drafts[r]) + 1)]
        step = Step(len(rows), self.gen)
        out = self.mrv2.apply(step.logits.clone(), self.mrv2.context(order, drafts))
        for i, (r, before) in enumerate(rows):
            req = self.live[r]
            fed = [] if -1 in before else before  # a placeholder row reads its request's first window
            check_row(self.server, step, out[i], i, req, req.prompt + req.known + fed,
                      f"V2 step {self.steps}, row {i} (request {r}, drafts {before}) {req.args}")
        TAP.rows = None  # MRV2 skips the processors when no request needs them
        for r in order:
            token = self.live[r].next_tokens(1)
            self.live[r].known += token
            self.mrv2.commit(r, token)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a loaded 2-core machine two threads
    make each THF forward 50-100x slower (measured: 1 ms vs 91 ms at load average 10)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SERVERS = ["same tokenizer", "another tokenizer (--real-retokenize)", "sliding THF, key/value cache"]


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    """Each server setting, built once for the module."""
    from tests.tiny_model import build_tiny_llama

    root = tmp_path_factory.mktemp("churn")
    other = build_tiny_llama(root / "other-tokenizer", vocab_size=700)
    built = {}

    def server(which: str) -> Server:
        if which not in built:
            retokenize = which == SERVERS[1]
            sliding = dict(attention="sliding", window=6) if which == SERVERS[2] else {}
            thf = build_tiny_thf(root / f"thf-{SERVERS.index(which)}", other if retokenize else tiny_model_dir,
                                 **sliding)
            built[which] = Server(tiny_model_dir, thf, retokenize)
        return built[which]

    return server


@pytest.mark.parametrize("runner", [V1Churn, V2Churn], ids=["V1", "MRV2"])
@pytest.mark.parametrize("which", SERVERS)
def test_every_row_gets_its_own_requests_transform(servers, runner, which):
    machine = type(runner.__name__, (runner,), {"server": servers(which)})
    run_state_machine_as_test(machine, settings=SETTINGS)


def test_mrv2_runs_the_early_layer_methods_first(servers):
    """sled+edt+real and dola+real under MRV2: SLED/DoLa, then EDT, then REAL's nucleus, as on V1
    (MRV2 applies custom processors in entry-point order: the early-layer one must be listed
    first)."""
    server = servers(SERVERS[0])
    mrv2 = mrv2_as_vllm_builds_it(server.config())
    stream = server.stream(0)
    requests = {
        "a": Request({"sampler": "sled+edt+real", "sled_alpha": 1.0, "sled_k": 5, "sled_lower_bound": -1000.0,
                      "edt_t0": 0.7, "edt_n": 0.5, "edt_theta": 1.0, "real_p0": 0.9, "real_decay_temperature": 1.0},
                     list(stream[:10]), list(stream[10:])),
        "b": Request({"sampler": "dola+real", "dola_relative_top": 0.1, "dola_divergence": "authors",
                      "real_p0": 0.8, "real_decay_temperature": 0.5}, list(stream[:20]), list(stream[20:])),
    }
    for r, req in requests.items():
        mrv2.add_request(r, req.prompt, req.params)
    mrv2.apply_staged_writes()
    step = Step(2, torch.Generator().manual_seed(0))
    out = mrv2.apply(step.logits.clone(), mrv2.context(list(requests)))
    for i, (r, req) in enumerate(requests.items()):
        check_row(server, step, out[i], i, req, req.prompt, f"request {r} {req.args}")


def test_retokenizer_holds_a_split_character_after_any_first_feed(servers):
    """A first feed of any length that ends between the bytes of a character, then one token a
    step: the history's text is the whole text's (no U+FFFD), as after short feeds."""
    from real_vllm.thf.retokenize import Retokenizer, TextHistory

    server = servers(SERVERS[1])
    ids = list(server.stream(0)[:60])  # "Zürich — 北京: a naïve façade": characters split across tokens
    assert any(server.splits_a_character(ids[:n]) for n in range(9, len(ids))), "no split character to test"
    retok = Retokenizer(server.served, server.thf_tokenizer, server.thf.window)
    whole = server.served.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    for first in range(1, len(ids)):
        history = TextHistory()
        for n in range(first, len(ids) + 1):
            retok.windows([history], [ids[retok.start(history, n):n]])
        assert history.text == whole, f"first feed of {first} tokens: {history.text[-40:]!r}"
