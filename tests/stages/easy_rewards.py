"""Rewards for the online-stage tests (loaded by name "stages.easy_rewards:digit_share" in worker processes)."""


def digit_share(completions, **columns):
    """Share of a completion's characters that are digits: a dense reward a tiny policy can climb quickly."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def vowel_share(completions, **columns):
    """Share of a completion's characters that are lowercase vowels (about 0.1–0.2 for a random tiny policy)."""
    return [sum(ch in "aeiou" for ch in text) / max(len(text), 1) for text in completions]


def odd_answers_only(completions, answer, **columns):
    """0 for every completion of a prompt whose answer is even (a zero-variance group); for an odd answer, the
    completion's length / 100, which differs between a tiny policy's samples."""
    return [len(text) / 100 if int(a) % 2 else 0.0 for text, a in zip(completions, answer)]
