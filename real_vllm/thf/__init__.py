"""THF: the Token-level Hallucination Forecasting model behind REAL sampling.

REAL (Residual Entropy from Asymptotic Line; Chang et al., TACL 2025, arXiv 2406.07735) sets a
per-step top-p threshold from a small model that predicts, for every position of a text, how the
next-token entropy of a model family falls as the family's size grows. The entropy the curve
tends to for an infinitely large model (its asymptote c) is the irreducible uncertainty of the
text; what is left above it at the served model's size (the residual d) signals a likely
hallucination, so REAL lowers top-p there: p_t = min(1, p0 * exp(-d / T_decay)).

Serving (loaded inside vLLM workers; imports nothing of the training side):
    curves       the curve forms, the asymptote, the residual entropy and the threshold
    model        THFModel (backbone + head), save/load, predict_last and its decode-time twin
                 predict_last_of_windows (the runtime's)
    fingerprint  tokenizer_fingerprint(): checkpoints and data folders record their tokenizer's
    retokenize   the cross-tokenizer path: served tokens -> text -> THF tokens, incrementally
    runtime      THFRuntime: the per-step forecast inside the vLLM worker

Training (docs/algorithms.md §2.1):
    corpus       Corpus, wiki_corpus() (the offline Wikipedia summaries, split by title), read_corpus()
    dataset      the data folder: meta.json, shards, the document split, load_split(), write_dataset()
    collect      collect(): per-token entropies of a family (FamilyMember, HFCausalLM) into a folder
    device       the device and dtype defaults of collect, train and eval
    family       a home-made family of small Llamas with the SmolLM2 tokenizer
    train        train(): the paper's loss, resumable per epoch
    evaluate     evaluate(): held-out RMSE per family size, distributions of c, d and p_t, a plot
    cli          `real-vllm thf collect | train | eval`

The authors' public code (amazon-science/llm-asymptotic-decoding, CC BY-NC 4.0) was read for
facts only; nothing here is copied from it.
"""
