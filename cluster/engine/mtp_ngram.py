"""MTP and n-gram lookup together (`--speculation mtp+ngram`). Per row, the lookup's draft when
its first token agrees with MTP's first draft: the output is then copying its context, where
the lookup's later tokens are likelier right than MTP's (whose acceptance decays with
position); MTP's draft otherwise, and when the lookup finds nothing. Verification is lossless
either way; the MTP layer catches up on whichever tokens were verified.
"""

from .mtp import MTPDrafter
from .ngram import NgramDrafter


class MTPNgramDrafter(MTPDrafter):
    queues_ahead = False  # each row's choice needs MTP's first draft on the host

    def __init__(self, model, mtp, k: int, n_min: int, n_max: int):
        super().__init__(model, mtp, k)
        self.ngram = NgramDrafter(k, n_min, n_max)

    def set_k(self, k: int) -> None:
        super().set_k(k)
        self.ngram.set_k(k)

    def propose_batch(self, seqs, caches) -> list[tuple[list[int], list]]:
        out = []
        for seq, (drafts, dists) in zip(seqs, super().propose_batch(seqs, caches), strict=True):
            copy, none = self.ngram.propose(seq)
            source = "ngram" if copy and copy[0] == drafts[0] else "mtp"
            self.stats.by_source[source] = self.stats.by_source.get(source, 0) + 1
            out.append((copy, none) if source == "ngram" else (drafts, dists))
        return out
