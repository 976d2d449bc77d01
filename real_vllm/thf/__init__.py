"""THF: the Token-level Hallucination Forecasting model behind REAL sampling.

REAL (Residual Entropy from Asymptotic Line; Chang et al., TACL 2025, arXiv 2406.07735) sets a
per-step top-p threshold from a small model that predicts, for every position of a text, how the
next-token entropy of a model family falls as the family's size grows. The entropy the curve
tends to for an infinitely large model (its asymptote c) is the irreducible uncertainty of the
text; what is left above it at the served model's size (the residual d) signals a likely
hallucination, so REAL lowers top-p there: p_t = min(1, p0 * exp(-d / T_decay)).

    curves     the curve forms, the asymptote, the residual entropy and the threshold
    model      THFModel (backbone + head), save/load, predict_last and its decode-time twin
               predict_last_of_windows (the runtime's)
    data       collect(): per-token entropies of a model family on a corpus; wiki_corpus()
    train      train(): the paper's loss, resumable per epoch
    evaluate   evaluate(): held-out RMSE per family size, distributions of c and d, a plot
    cli        `real-vllm thf collect | train | eval`
    runtime    THFRuntime: the per-step forecast inside the vLLM worker

The authors' public code (amazon-science/llm-asymptotic-decoding, CC BY-NC 4.0) was read for
facts only; nothing here is copied from it.
"""
