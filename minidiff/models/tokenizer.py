"""Byte-pair encoding: the tokenizer that turns a prompt into the integers CLIP's text encoder reads.

A text model does not read letters; it reads token ids, each an index into a table of learned vectors.
Whole words as tokens would need a huge table and still fail on a word never seen; single characters
are few, but make every sentence long and leave the model to learn spelling. *Subwords* sit between:
a frequent word is one token (" circle"), a rare one is spelled from a few frequent pieces, and no
word is ever unknown.

Byte-pair encoding (BPE; Sennrich et al., 2016) learns those pieces from a corpus. The base tokens are
the 256 byte values: any text in any script, emoji and control characters included, is a sequence of
UTF-8 bytes, so the base vocabulary already covers everything (byte-level BPE, as in GPT-2 and CLIP).
Learning repeats one step: count every adjacent pair of tokens in the corpus and make the most
frequent pair a new token (a "merge"), until the vocabulary is as large as wanted. Encoding a new text
replays the learned merges in the order they were learned; what no merge covers stays as bytes.

Before counting, a text is normalized (``normalize``: lowercased, whitespace collapsed) and split into
pre-tokens (``pretokenize``): words with their leading space, single digits, runs of punctuation,
and single Chinese characters (Chinese has no spaces between words, so each character is its own
pre-token: a learned token is then one character, and the transformer reads words from them).
Merges never cross a pre-token, so " red" in " red," and in " red circle" is the same token.

CLIP (Radford et al., 2021) also lowercases, learns 49,152 merges from 400 million captions, wraps
each prompt in a start and an end token, pads or cuts it to 77 tokens, and takes the text
transformer's state at the end token as the prompt's summary (its attention is causal, so only the
end token has seen every word). Ours is the same mechanism, smaller: procedural captions ("a large
red circle on a blue background, top left") use a few hundred words in a few wordings, so about a
thousand tokens make every common word a single token, and a short context holds every caption.

**New words** (chapter 12). A word the corpus never held is spelled from pieces ("heart" → " ", "he",
"ar", "t") that mean nothing to the text encoder. Teaching a model a new concept starts by giving its
word a token of its own (``with_words``): each new word gets an id after the special tokens, and the
text encoder a new row in its embedding table for it — the row textual inversion (Gal et al., 2022)
learns. A new word is matched whole (not inside a longer word), with the space before it, as " circle" is.
"""
import json
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import torch

from minidiff.files import DataError, write_json_atomic

SPECIAL_TOKENS = ("<start>", "<end>", "<pad>")  # their ids follow the merges, in this order
FORMAT = "minidiff byte-level BPE"

# one Chinese character (Chinese writes no spaces: a run of characters is a phrase, not a word, and
# merges across it would weld words together, e.g. size and colour in 大红色), a word of letters of
# any other script (\w less digits and "_") with its leading space, one digit, or a run of anything
# else that is not a space; in normalized text these cover every character
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
PRE_TOKEN = re.compile(rf" ?[{HAN}]| ?(?:(?![{HAN}])[^\W\d_])+| ?\d| ?(?:[^\w\s]|_)+")


def normalize(text: str) -> str:
    """Lowercase, strip, and collapse each run of whitespace to one space, as CLIP's tokenizer does:
    " A  Red\\nCircle " → "a red circle". The tokenizer sees only normalized text, so
    ``decode(encode(text)) == normalize(text)``."""
    return " ".join(text.lower().split())


def pretokenize(text: str) -> list[str]:
    """Split normalized text into the pieces merges stay inside; joined, they give the text back:
    "a red circle, 3rd" → ["a", " red", " circle", ",", " 3", "rd"]; "红色圆形" → ["红", "色", "圆", "形"]."""
    return PRE_TOKEN.findall(text)


def utf8(piece: str) -> list[int]:
    """The byte values of ``piece``: its base tokens. A lone surrogate (never part of real text, only
    of broken decoding) cannot be UTF-8 and becomes "?"."""
    return list(piece.encode("utf-8", errors="replace"))


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, scanning left to right, with ``new_id``."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


class Tokenizer:
    """A learned byte-level BPE. Ids 0–255 are the bytes, 256… the merges in the order they were
    learned (merge r makes token 256 + r), and the last three are ``start_id``, ``end_id``, ``pad_id``."""

    def __init__(self, merges, words=()):
        self.merges = [tuple(pair) for pair in merges]
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}  # pair → when it was learned
        self.token_bytes = [bytes([value]) for value in range(256)]
        for left, right in self.merges:
            self.token_bytes.append(self.token_bytes[left] + self.token_bytes[right])
        self.start_id, self.end_id, self.pad_id = range(len(self.token_bytes), len(self.token_bytes) + 3)
        self._word_ids = {}  # pre-token → its ids: captions repeat their words
        self.words = tuple(_new_word(word) for word in words)
        if len(set(self.words)) != len(self.words):
            raise ValueError(f"the new words {', '.join(self.words)} repeat one")
        self.word_ids = {word: self.pad_id + 1 + k for k, word in enumerate(self.words)}
        self._words = _words_pattern(self.words)

    def with_words(self, words) -> "Tokenizer":
        """This tokenizer with a token of its own for each of ``words`` (ids after ``<pad>``, in order),
        on top of any it had: every other text encodes as before."""
        return Tokenizer(self.merges, (*self.words, *words))

    @property
    def vocab_size(self) -> int:
        """The rows the text encoder's embedding table needs: bytes, merges, special tokens, new words."""
        return len(self.token_bytes) + len(SPECIAL_TOKENS) + len(self.words)

    def __repr__(self):
        words = f", new words {', '.join(self.words)}" if self.words else ""
        return (f"Tokenizer(vocab_size={self.vocab_size}: 256 bytes, {len(self.merges)} merges, "
                f"special tokens {', '.join(SPECIAL_TOKENS)}{words})")

    def encode(self, text: str) -> list[int]:
        """The token ids of ``normalize(text)``, without special tokens. Never fails: every character
        is made of bytes, and every byte is a token. "<start>" typed in a prompt is just text. A new
        word (``with_words``) is one token, the space before it included."""
        text, ids = normalize(text), []
        parts = self._words.split(text) if self._words else [text]
        for k, part in enumerate(parts):  # split keeps the matched words at the odd places
            if k % 2:
                ids.append(self.word_ids[part.lstrip(" ")])
            else:
                ids += [i for word in pretokenize(part) for i in self._encode_word(word)]
        return ids

    def _encode_word(self, word: str) -> list[int]:
        """Replay the merges on one pre-token: merge the adjacent pair that was learned first (lowest
        rank), everywhere in the word, and repeat until no learned pair is left. This equals applying
        every merge in the order learned, because a pair can only hold tokens made before it."""
        if word not in self._word_ids:
            ids = utf8(word)
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
                if pair not in self.ranks:
                    break
                ids = merge(ids, pair, 256 + self.ranks[pair])
            self._word_ids[word] = ids
        return self._word_ids[word]

    def decode(self, ids) -> str:
        """The text of ``ids`` (a list or a tensor row), special tokens dropped. Bytes that do not form
        a whole UTF-8 character (a prompt cut mid-character) read as "�". A new word reads with a space
        before it, unless it comes first or is Chinese ("heart,heart" comes back as "heart, heart")."""
        data = b""
        for i in map(int, ids):
            if self._check(i) < self.start_id:
                data += self.token_bytes[i]
            elif i > self.pad_id:  # a new word: after a space, unless first, Chinese or after Chinese
                word, last = self.words[i - self.pad_id - 1], data[-4:].decode("utf-8", errors="ignore")[-1:]
                data += (word if not last or _HAN_START.match(word) or _HAN_START.match(last) else " " + word).encode()
        return data.decode("utf-8", errors="replace")

    def piece(self, token_id: int) -> str:
        """How one token reads: its text, a special token's name, or ``\\xe8``-style escapes for bytes
        that are only part of a character."""
        if self._check(token_id) > self.pad_id:
            return self.words[token_id - self.pad_id - 1]
        if token_id >= self.start_id:
            return SPECIAL_TOKENS[token_id - self.start_id]
        return self.token_bytes[token_id].decode("utf-8", errors="backslashreplace")

    def pieces(self, text: str) -> list[str]:
        """How ``text`` splits into learned tokens: "a large red circle" → ["a", " large", " red", " circle"]."""
        return [self.piece(i) for i in self.encode(text)]

    def _check(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is not in this tokenizer's vocabulary (0 to {self.vocab_size - 1})")
        return token_id

    def __call__(self, texts, context_length: int) -> torch.Tensor:
        """Token ids (len(texts), context_length) for a batch of prompts (or one string): each row is
        ``<start> tokens… <end>`` then ``<pad>`` to the length. A prompt that does not fit keeps its
        first ``context_length - 2`` tokens between ``<start>`` and ``<end>``, and a warning says so."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if context_length < 2:
            raise ValueError(f"context_length must hold at least <start> and <end>, not {context_length}")
        ids = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        cut = []  # (prompt, its length with <start> and <end>)
        for row, text in enumerate(texts):
            tokens = self.encode(text)
            if len(tokens) > context_length - 2:
                cut.append((text, len(tokens) + 2))
                tokens = tokens[:context_length - 2]
            ids[row, :len(tokens) + 2] = torch.tensor([self.start_id, *tokens, self.end_id])
        if cut:
            text, length = cut[0]
            shown = text if len(text) <= 60 else text[:59] + "…"
            others = f" ({len(cut) - 1} more in this batch were cut too)" if len(cut) > 1 else ""
            warnings.warn(f'prompt "{shown}" is {length} tokens with <start> and <end>; the text encoder '
                          f"reads {context_length}, so the last {length - context_length} were dropped{others}",
                          stacklevel=2)
        return ids

    def padding_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True where ``ids`` holds a real token (<start>, text or <end>), False on padding."""
        return ids != self.pad_id

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The index of each row's ``<end>`` token, where CLIP reads the prompt's summary: (B,) long."""
        return (ids == self.end_id).int().argmax(dim=-1)

    def to_json(self) -> dict:
        words = {"words": list(self.words)} if self.words else {}
        return {"format": FORMAT, "special_tokens": list(SPECIAL_TOKENS),
                "merges": [list(pair) for pair in self.merges], **words}

    @classmethod
    def from_json(cls, obj, source: str = "this JSON") -> "Tokenizer":
        """The tokenizer ``to_json`` described; DataError naming ``source`` if ``obj`` is not one."""
        problem = _problem(obj)
        if problem:
            raise DataError(f"{source} is not a minidiff tokenizer file: {problem}; train one with "
                            "train_bpe() and write it with Tokenizer.save().")
        return cls(obj["merges"], obj.get("words", ()))

    def save(self, path) -> Path:
        """Write the merges and special tokens as a small JSON file, atomically."""
        return write_json_atomic(self.to_json(), path)

    @classmethod
    def load(cls, path) -> "Tokenizer":
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path} is missing; train a tokenizer with train_bpe() and save() it there.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path} is not JSON ({e}), so not a tokenizer file; train one with "
                            "train_bpe() and write it with Tokenizer.save().") from None
        return cls.from_json(obj, source=str(path))


def _problem(obj) -> str | None:
    """What makes ``obj`` not a saved tokenizer, in a few words, or None if it is one."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return f'it lacks the entry "format": "{FORMAT}"'
    if obj.get("special_tokens") != list(SPECIAL_TOKENS):
        return f'its "special_tokens" should be {json.dumps(list(SPECIAL_TOKENS))}'
    merges = obj.get("merges")
    if not isinstance(merges, list):
        return '"merges" should be a list of [left id, right id] pairs'
    for rank, pair in enumerate(merges):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(type(i) is int and 0 <= i < 256 + rank for i in pair)):
            return f"merge {rank} is {json.dumps(pair)}, not two ids of tokens made before it (0 to {255 + rank})"
    words = obj.get("words", [])
    if not isinstance(words, list) or any(not isinstance(w, str) or _new_word(w, check=False) is None for w in words):
        return '"words" should be a list of new words, each one word of letters'
    return None


_HAN_START = re.compile(rf"[{HAN}]")
_LATIN = rf"(?![{HAN}])[^\W\d_]"  # a letter that is not a Chinese character
_WORD = re.compile(rf"(?:[{HAN}]|(?![{HAN}])[^\W\d_])+")


def _new_word(word, check: bool = True) -> str | None:
    """``word`` normalized, if it is one word of letters (Latin, Chinese, …: no spaces, digits or
    punctuation); else a ValueError (None with ``check=False``)."""
    word = normalize(word) if isinstance(word, str) else ""
    if _WORD.fullmatch(word):
        return word
    if check:
        raise ValueError(f"a new word is one word of letters, without spaces, digits or punctuation: not {word!r}")
    return None


def _words_pattern(words) -> re.Pattern | None:
    """Matches any of ``words`` whole, with the space before it: not inside a longer word of letters
    (a Chinese word may stand anywhere, as Chinese writes no spaces). Longest first, so one new word
    may contain another."""
    if not words:
        return None
    alternatives = [re.escape(w) if _HAN_START.match(w) else rf"(?<!{_LATIN}){re.escape(w)}(?!{_LATIN})"
                    for w in sorted(words, key=len, reverse=True)]
    return re.compile("( ?(?:" + "|".join(alternatives) + "))")


def train_bpe(texts, vocab_size: int) -> Tokenizer:
    """Learn merges from ``texts`` until the vocabulary (256 bytes, the merges, 3 special tokens) has
    ``vocab_size`` tokens, or no adjacent pair occurs twice.

    Each step merges the most frequent pair, counted over the whole corpus; a tie goes to the pair with
    the smallest ids, so the merges depend on the corpus alone. Captions repeat their words, so each
    distinct pre-token is stored once with its frequency, and a merge recounts only the words that
    held the merged pair (``holders``), not the corpus.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes and special tokens)")
    frequency = Counter(word for text in texts for word in pretokenize(normalize(text)))
    words = [utf8(word) for word in frequency]
    counts = list(frequency.values())
    pair_counts, holders = Counter(), defaultdict(set)  # pair → occurrences; pair → words holding it
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += counts[index]
            holders[pair].add(index)
    merges = []
    while 256 + len(merges) + len(SPECIAL_TOKENS) < vocab_size and pair_counts:
        best = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
        if pair_counts[best] < 2:
            break
        merges.append(best)
        for index in holders.pop(best):
            old, count = words[index], counts[index]
            new = merge(old, best, 255 + len(merges))
            if len(new) == len(old):  # an earlier merge already took this word's pair apart
                continue
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= count
                if not pair_counts[pair]:
                    del pair_counts[pair]
            words[index] = new
            for pair in zip(new, new[1:]):
                pair_counts[pair] += count
                holders[pair].add(index)
    return Tokenizer(merges)
