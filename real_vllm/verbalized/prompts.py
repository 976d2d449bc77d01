"""The VS prompts (docs/algorithms.md §6.1): VS-Standard, VS-CoT and VS-Multi, with the tail knob.

VS-Standard asks for k responses, each with the probability the model gives it relative to the
full distribution of responses; VS-CoT asks for a "reasoning" field first; VS-Multi asks for k
responses over several turns of m. The tail knob ``tau`` replaces "from the full distribution"
with "from the tails, each probability below tau" (Zhang et al., arXiv 2510.01171).
"""

from __future__ import annotations

from real_vllm.verbalized.options import DEFAULT_K, check_k, check_method, check_per_turn, check_tau


def turn_sizes(k: int, m: int | None = None) -> list[int]:
    """How many responses each VS-Multi turn asks for: k = 5, m = 2 -> [2, 2, 1].

    ``m`` defaults to ceil(k / 2): two turns, the least that still shows the model its own
    first answers before it writes alternatives.
    """
    k = check_k(k)
    m = -(-k // 2) if m is None else check_k(m, "m")
    if m > k:
        raise ValueError(f"m (responses per turn) must be <= k, got m={m} > k={k}")
    return [m] * (k // m) + ([k % m] if k % m else [])


def _sampling_line(tau: float | None) -> str:
    if tau is None:
        return "Sample the responses at random from the full distribution of possible responses."
    return (
        "Sample the responses at random from the tails of the distribution, such that the "
        f"probability of each response is less than {tau:g}."
    )


def _format_line(n: int, reasoning: bool) -> str:
    item = '{"text": "...", "probability": ...}'
    head = '"reasoning": "...", ' if reasoning else ""
    return f'Return only a JSON object of the form {{{head}"responses": [{item}, ...]}} with exactly {n} responses.'


def system_prompt(method: str = "standard", k: int = DEFAULT_K, tau: float | None = None, *, m: int | None = None) -> str:
    """The system prompt of the first turn.

    VS-Standard asks for k responses with probabilities; VS-CoT asks for step-by-step reasoning
    about the space of responses first; VS-Multi asks for the first m of k (later turns use
    :func:`followup_message`). ``tau`` switches from "the full distribution" to "the tails,
    each probability below tau".
    """
    method, k, tau = check_method(method), check_k(k), check_tau(tau)
    check_per_turn(method, m)
    n = turn_sizes(k, m)[0] if method == "multi" else k
    lines = []
    if method == "multi" and n < k:
        lines.append(f"You will generate {k} responses to the user's input in total, {n} at a time. Generate the first {n} now.")
    else:
        lines.append(f"Generate {n} different responses to the user's input.")
    if method == "cot":
        lines.append(
            "First think step by step about the range of possible responses (different angles, "
            "styles, content) and write that reasoning in the \"reasoning\" field; then give the responses."
        )
    lines += [
        "Each response has a \"text\" (one complete response to the input) and a \"probability\" "
        "(a number from 0.0 to 1.0: how likely that response is given the input, relative to "
        "the full distribution of possible responses).",
        _sampling_line(tau),
        _format_line(n, method == "cot"),
    ]
    return "\n".join(lines)


def followup_message(n: int, tau: float | None = None) -> str:
    """The user turn that asks VS-Multi for ``n`` more responses."""
    n, tau = check_k(n, "n"), check_tau(tau)
    return "\n".join([
        f"Generate {n} more alternative responses to the original input, different from all the responses above.",
        _sampling_line(tau),
        _format_line(n, False),
    ])


def build_messages(prompt: str, method: str = "standard", k: int = DEFAULT_K, tau: float | None = None, *, m: int | None = None) -> list[dict]:
    """Chat messages for the first (or only) turn: the VS system prompt and the user's prompt."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return [
        {"role": "system", "content": system_prompt(method, k, tau, m=m)},
        {"role": "user", "content": prompt},
    ]


def continue_conversation(messages: list[dict], answer: str, n: int, tau: float | None = None) -> list[dict]:
    """VS-Multi's next turn: the conversation so far, the model's answer, and a request for
    ``n`` more responses (a new list; ``messages`` is left as it was)."""
    return messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": followup_message(n, tau)}]
