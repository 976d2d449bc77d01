"""The two ways to run VS: ``vllm.LLM`` in process (:func:`generate_offline_many`,
:func:`generate_offline`) and any OpenAI-compatible server (:func:`generate_openai`)."""

from __future__ import annotations

import re
from typing import Any, Sequence

from real_vllm.verbalized.distribution import Distribution
from real_vllm.verbalized.errors import VSParseError, VSServerError
from real_vllm.verbalized.options import (
    DEFAULT_K, DEFAULT_MAX_REASONING_CHARS, DEFAULT_MAX_TEXT_CHARS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
    check_choice,
)
from real_vllm.verbalized.request import Conversation, Plan

CONSTRAINTS = ("regex", "json", "none")
ERROR_POLICIES = ("raise", "keep")
# generate_openai's ways of asking for the answer's format, in the order "auto" tries them.
STRUCTURED_LADDERS = {"auto": ("vllm", "json_schema", "none"), "vllm": ("vllm",),
                      "json_schema": ("json_schema",), "none": ("none",)}
# The HTTP statuses of a server that understood the request and refused part of it.
_REFUSAL_STATUSES = (400, 422)


def generate_offline_many(
    llm,
    prompts: Sequence[str],
    *,
    method: str = "standard",
    k: int = DEFAULT_K,
    tau: float | None = None,
    m: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seeds: Sequence[int | None] | None = None,
    max_tokens: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS,
    sampler_args: dict | None = None,
    constraint: str = "regex",
    min_probability: float | None = None,
    min_k_survivors: int = 1,
    all_zero: str = "uniform",
    errors: str = "raise",
    use_tqdm: bool = False,
) -> list[Distribution | VSParseError]:
    """VS for many prompts with ``vllm.LLM.chat`` and structured outputs, one batch per turn.

    ``constraint``: "regex" (default: :func:`answer_regex`, compact and bounded), "json" (the
    JSON schema; whitespace is unbounded unless the engine sets disable_any_whitespace) or
    "none" (the prompt alone). ``sampler_args`` go to ``SamplingParams.extra_args``, e.g.
    {"sampler": "edt"} for VS over EDT decoding. ``max_tokens`` defaults to
    :func:`answer_max_tokens`, so the answer is never cut short (the engine stops at its
    max_model_len all the same; a cut answer keeps its complete items and says so).
    ``seeds[i]`` seeds prompt i's generation. ``errors``: "raise" raises the first
    :class:`VSParseError`; "keep" puts it in the result list in place of that prompt's
    distribution (a batch is not lost to one bad answer).

    On vLLM 0.32's CPU backend, seeded requests crash the engine ("CPU Generator does not use
    offset") when a prompt's prefill is split across steps, which large batches cause; create
    the LLM with ``enable_chunked_prefill=False, max_num_batched_tokens=max_model_len`` there.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    plan = Plan.build(method=method, k=k, tau=tau, m=m, max_text_chars=max_text_chars,
                      max_reasoning_chars=max_reasoning_chars, temperature=temperature, top_p=top_p,
                      sampler_args=sampler_args, min_probability=min_probability,
                      min_k_survivors=min_k_survivors, all_zero=all_zero)
    check_choice(constraint, "constraint", CONSTRAINTS)
    check_choice(errors, "errors", ERROR_POLICIES)
    prompts = list(prompts)
    seeds = list(seeds) if seeds is not None else [None] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must have one entry per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
    jobs = [Conversation(plan, p, s) for p, s in zip(prompts, seeds)]
    failed: dict[int, VSParseError] = {}
    for turn, n in enumerate(plan.sizes):
        live = [i for i in range(len(jobs)) if i not in failed]
        if not live:
            break
        regex, schema, bound = plan.turn_format(n)
        structured = {"regex": lambda: StructuredOutputsParams(regex=regex),
                      "json": lambda: StructuredOutputsParams(json=schema), "none": lambda: None}[constraint]
        params = [
            SamplingParams(
                temperature=temperature, top_p=top_p, max_tokens=max_tokens or bound, seed=jobs[i].turn_seed(turn),
                # One StructuredOutputsParams per request: vLLM writes the chosen backend into it.
                structured_outputs=structured(), extra_args=plan.sampler_extra(),
            )
            for i in live
        ]
        outputs = llm.chat([jobs[i].messages for i in live], params, use_tqdm=use_tqdm)
        for i, out in zip(live, outputs):
            completion = out.outputs[0]
            try:
                jobs[i].record(turn, completion.text, completion.finish_reason, regex if constraint == "regex" else None)
            except VSParseError as e:
                if errors == "raise":
                    raise
                failed[i] = e
    meta = plan.meta("vllm.LLM", constraint=constraint)
    results: list[Distribution | VSParseError] = []
    for i, job in enumerate(jobs):
        try:
            results.append(failed[i] if i in failed else job.distribution(meta))
        except VSParseError as e:
            if errors == "raise":
                raise
            results.append(e)
    return results


def generate_offline(llm, prompt: str, *, seed: int | None = None, **kwargs) -> Distribution:
    """VS for one prompt with ``vllm.LLM``; see :func:`generate_offline_many` for the options."""
    return generate_offline_many(llm, [prompt], seeds=[seed], **kwargs)[0]


def _is_refusal(error: Exception) -> bool:
    """HTTP 400/422: the server understood the request and refused part of it."""
    return getattr(error, "status_code", None) in _REFUSAL_STATUSES


def _error_text(error: Exception) -> str:
    message = None
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
    return f"HTTP {getattr(error, 'status_code', '?')}: {message or error}"


def _format_request(mode: str, regex: str, schema: dict, sampler_extra: dict | None) -> dict[str, Any]:
    """The create() arguments that ask for the answer's format in one ``mode`` and carry the
    sampler's arguments."""
    kwargs: dict[str, Any] = {}
    extra_body: dict[str, Any] = {}
    if mode == "vllm":
        extra_body["structured_outputs"] = {"regex": regex}
    elif mode == "json_schema":
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "verbalized_sampling", "schema": schema, "strict": True},
        }
    if sampler_extra:
        extra_body["vllm_xargs"] = sampler_extra
    if extra_body:
        kwargs["extra_body"] = extra_body
    return kwargs


def generate_openai(
    client,
    model: str,
    prompt: str,
    *,
    method: str = "standard",
    k: int = DEFAULT_K,
    tau: float | None = None,
    m: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int | None = None,
    max_tokens: int | None = None,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_reasoning_chars: int = DEFAULT_MAX_REASONING_CHARS,
    sampler_args: dict | None = None,
    structured: str = "auto",
    min_probability: float | None = None,
    min_k_survivors: int = 1,
    all_zero: str = "uniform",
    timeout: float | None = None,
) -> Distribution:
    """VS through an OpenAI-compatible chat completions endpoint (an ``openai.OpenAI`` client).

    ``structured``: "vllm" sends vLLM's ``structured_outputs`` ({"regex": answer_regex(...)});
    "json_schema" sends ``response_format`` with :func:`answer_schema`; "none" sends the prompt
    alone and relies on the tolerant parser; "auto" tries them in that order, moving on when the
    server refuses one (HTTP 400/422) for a reason other than a parameter it names (vLLM names
    them: a bad sampler argument is reported at once). ``sampler_args`` go out as
    ``vllm_xargs`` (vLLM only). ``max_tokens`` defaults to the server's default (vLLM: the rest
    of the context, so a constrained answer completes whenever it fits).
    ``meta["structured"]`` of the result says which way was used, ``meta["refused"]`` why the
    others were not. Raises :class:`VSServerError` when the server refuses all of them.
    """
    plan = Plan.build(method=method, k=k, tau=tau, m=m, max_text_chars=max_text_chars,
                      max_reasoning_chars=max_reasoning_chars, temperature=temperature, top_p=top_p,
                      sampler_args=sampler_args, min_probability=min_probability,
                      min_k_survivors=min_k_survivors, all_zero=all_zero)
    modes = STRUCTURED_LADDERS[check_choice(structured, "structured", STRUCTURED_LADDERS)]
    job = Conversation(plan, prompt, seed)
    refusals: list[str] = []
    for turn, n in enumerate(plan.sizes):
        regex, schema, _ = plan.turn_format(n)
        while True:
            mode = modes[0]
            kwargs = _format_request(mode, regex, schema, plan.sampler_extra())
            # Unset options stay out of the request: the SDK sends None as null, and timeout=None
            # would mean "no timeout" rather than the client's own.
            if seed is not None:
                kwargs["seed"] = job.turn_seed(turn)
            if timeout is not None:
                kwargs["timeout"] = timeout
            # No max_tokens by default: vLLM then allows the rest of the context, and refuses a
            # max_tokens above max_model_len, which answer_max_tokens (a worst case) can exceed.
            if max_tokens is not None:
                kwargs["max_tokens"] = max_tokens
            try:
                reply = client.chat.completions.create(
                    model=model, messages=job.messages, temperature=temperature, top_p=top_p, **kwargs,
                )
                break
            except Exception as e:  # noqa: BLE001 - only refusals are retried; the rest re-raise
                if not _is_refusal(e):
                    raise
                message = _error_text(e)
                named = re.search(r"parameter=([\w.]+)", message)
                if named and not named.group(1).startswith(("structured_outputs", "response_format")):
                    # vLLM names the parameter it refused: not the format, so no other mode helps.
                    raise VSServerError(f"the server refused the request: {message}") from e
                refusals.append(f"{mode}: {message}")
                if len(modes) == 1:
                    raise VSServerError("the server refused every way of asking for VS:\n  " + "\n  ".join(refusals)) from e
                modes = modes[1:]  # a server that refused a mode refuses it on later turns too
        choice = reply.choices[0]
        try:
            job.record(turn, choice.message.content, choice.finish_reason, regex if mode == "vllm" else None)
        except VSParseError as e:
            if refusals:
                raise VSParseError(f"{e}\n(the server refused structured outputs: {'; '.join(refusals)})") from None
            raise
    return job.distribution(plan.meta("openai", model=model, structured=modes[0], refused=refusals))
