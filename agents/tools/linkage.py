"""Probabilistic record linkage for master-my-data: fields, blocking, comparison, weights, clusters.

The method is Fellegi and Sunter's (1969), as Splink and most statistical offices use it:

- Each match column is a *field* of a kind (name, text, id, date, email, phone), normalised
  once. Two records' values are compared into a level: 3 exact, 2 close, 1 similar, 0 different,
  or missing when either is empty — a missing value is neither agreement nor disagreement.
- A level carries evidence log2(m/u): m is how often true matches show it, u how often two
  unrelated records do. u is measured on the data (exact agreement from the value frequencies,
  the other levels from random record pairs); m and the share of matches among the candidate
  pairs are estimated by expectation–maximisation over the candidate pairs. Agreeing on a rare
  value tells more than agreeing on a common one (term-frequency adjustment of the exact level).
  Small inputs lean on prior values (pseudo-counts), large ones on what they show.
- Blocking has one pass per field and key (the exact value, a phonetic key, a first token,
  transposition-proof keys …), so a typo in one field does not lose a pair the others find; a
  pair is compared only when it shares a key in two fields (all but one of those both records
  fill, when they fill fewer) or the value of an identifying field (an e-mail, an id), which cuts
  the pairs compared 2.8- to 13-fold on FEBRL and customers.csv without losing a true one.
- Pairs whose match probability reaches the threshold are linked; records joined only through
  a weak link are not clustered together: within each linked component, clusters merge by the
  average evidence over all their pairs (average linkage), not by one link.

Everything is vectorised with numpy and rapidfuzz's batch scorers: comparisons run once per
distinct pair of values, never in a Python loop per record pair.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import jellyfish
import numpy as np
import pandas as pd
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA, JaroWinkler
from rapidfuzz.process import cpdist

from agents.tools.inference import EMAIL_PATTERN, PHONE_NAME, classify, factorize_texts, parse_dates

KINDS = ("name", "text", "id", "date", "email", "phone")
LEVELS = ("different", "similar", "close", "exact")  # index = level; missing is -1
EXACT = 3
SAMPLE_SHARE = 0.8  # a column is of a kind when this share of its sampled values is
KIND_SAMPLE = 1000  # distinct values, spread over the column, that decide its kind
U_SAMPLE_PAIRS = 20_000
# Prior probabilities of each level for unrelated records (u) and for true matches (m), and how
# many pairs' worth of evidence each prior counts for.
U_PRIOR = {
    "name": (0.95, 0.03, 0.01, 0.01),
    "text": (0.95, 0.03, 0.01, 0.01),
    "id": (0.97, 0.01, 0.019, 0.001),
    "date": (0.98, 0.015, 0.004, 0.001),
    "email": (0.9998, 0.0001, 0.00005, 0.00005),
    "phone": (0.9998, 0.0001, 0.00005, 0.00005),
}
M_PRIOR = (0.05, 0.05, 0.1, 0.8)
U_PSEUDO_PAIRS = 1000.0
M_PSEUDO_PAIRS = 50.0
PRIOR_MATCH_SHARE, PRIOR_PSEUDO_PAIRS = 0.01, 50.0
MAX_MATCH_SHARE = 0.5  # matches are the minority of candidate pairs; EM may not swap the classes
EM_MAX_ITERATIONS, EM_TOLERANCE = 100, 1e-6
MIN_SHARED_FIELDS = 2  # fields in which a pair must share a blocking key to be compared (see candidate_pairs)
IDENTIFYING_SHARE = 0.5  # distinct values per filled record from which one shared value is enough
COMPLETE_COMPONENTS_UP_TO = 100  # members; larger linked components are judged on their scored pairs

_PUNCTUATION = re.compile(r"[^\w\s@.+-]", re.UNICODE)
_SPACES = re.compile(r"\s+")
_ID_LIKE = re.compile(r"[\d\s./-]*\d[\d\s./-]*|[A-Za-z]{0,4}[-_]?\d{3,}")
_COMPACT_DATE = re.compile(r"(1[89]|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])")


# --- fields ---------------------------------------------------------------------------------------


@dataclass
class Field:
    """One match column, normalised: `codes[row]` indexes `values` (-1 = missing)."""

    name: str
    kind: str
    codes: np.ndarray
    values: np.ndarray  # the distinct normalised values (str)
    counts: np.ndarray = field(init=False)  # records holding each value
    aux: np.ndarray | None = None  # per distinct value: a name's phonetic key, an e-mail's local part

    def __post_init__(self) -> None:
        present = self.codes[self.codes >= 0]
        self.counts = np.bincount(present, minlength=len(self.values))

    @property
    def filled(self) -> int:
        return int(self.counts.sum())

    @cached_property
    def lengths(self) -> np.ndarray:
        """Each distinct value's length in characters."""
        return np.fromiter(map(len, self.values), dtype=np.int64, count=len(self.values))

    @cached_property
    def digits(self) -> np.ndarray:
        """A date field's distinct values (YYYYMMDD) as rows of 8 character codes."""
        return _digits(self.values)


def column_kind(name: str, values: pd.Series) -> str:
    """What a column holds, judged on a sample of its distinct values."""
    present = values.dropna()
    present = present[present.str.strip() != ""]
    if PHONE_NAME.search(name):
        return "phone"
    distinct = present.unique()
    sample = pd.Series(distinct[:: max(1, len(distinct) // KIND_SAMPLE)][:KIND_SAMPLE]).astype(str).str.strip()
    if sample.empty:
        return "text"
    if sample.str.fullmatch(_COMPACT_DATE).mean() >= SAMPLE_SHARE:
        return "date"
    kinds = classify(sample).value_counts(normalize=True)
    if kinds.get("email", 0) >= SAMPLE_SHARE:
        return "email"
    if kinds.get("date", 0) + kinds.get("datetime", 0) >= SAMPLE_SHARE:
        return "date"
    if sample.str.fullmatch(_ID_LIKE).mean() >= SAMPLE_SHARE:
        return "id"
    tokens = sample.str.split().str.len()
    return "name" if tokens.mean() <= 1.5 else "text"


def normalise(values: pd.Series, kind: str) -> pd.Series:
    """Values in the form they are compared in (None where empty or unusable)."""
    present = values.dropna().astype(str)
    if kind == "email":
        out = present.str.strip().str.lower()
        out = out.where(out.str.fullmatch(EMAIL_PATTERN))
    elif kind == "phone":
        digits = present.str.replace(r"\D", "", regex=True).str[-10:]
        out = digits.where(digits.str.len() >= 7)
    elif kind == "date":
        text = present.str.strip()
        compact = text.str.fullmatch(r"\d{8}")
        parsed, _ = parse_dates(text[~compact])
        out = pd.concat([text[compact], parsed.dt.strftime("%Y%m%d")])
    elif kind == "id":
        out = present.str.casefold().str.replace(r"[\s./_-]", "", regex=True)
    else:
        out = present.str.casefold().str.replace(_PUNCTUATION, " ", regex=True)
        out = out.str.replace(_SPACES, " ", regex=True).str.strip()
    out = out.where(out.notna() & (out != ""))
    return out.reindex(values.index)


def make_field(name: str, values: pd.Series, kind: str | None = None) -> Field:
    # Columns repeat their values: each distinct raw value is judged and normalised once.
    raw_codes, raw_values = factorize_texts(values.to_numpy(dtype=object))
    raw = pd.Series(raw_values, dtype=object)
    kind = kind or column_kind(name, raw)
    codes, uniques = factorize_texts(normalise(raw, kind).to_numpy(dtype=object))
    codes = np.append(codes, -1)[raw_codes]  # a missing raw value (-1) indexes the appended -1
    uniques = np.asarray(uniques, dtype=object)
    aux = None
    if kind in ("name", "text"):
        sounds: dict[str, str] = {}  # tokens repeat across values (street, road …): each is coded once
        aux = np.array([_phonetic(v, sounds) for v in uniques], dtype=object)
    elif kind == "email":
        aux = np.array([v.split("@")[0] for v in uniques], dtype=object)
    return Field(name, kind, codes.astype(np.int64), uniques, aux=aux)


def _phonetic(value: str, sounds: dict[str, str]) -> str:
    keys = []
    for token in value.split():
        if token.isalpha():
            if token not in sounds:
                sounds[token] = jellyfish.nysiis(token)
            keys.append(sounds[token])
    return " ".join(keys) or value


# --- blocking -------------------------------------------------------------------------------------


def _key_codes(fld: Field, key: str) -> np.ndarray:
    """Each record's code for one blocking key of a field (-1 = no key)."""
    if key == "value":
        return fld.codes
    if key in ("phonetic", "local_part"):
        per_value = fld.aux
    elif key == "first_token":
        per_value = np.array([v.split()[0] if len(v.split()) > 1 else None for v in fld.values], dtype=object)
    elif key == "sorted":  # transposed characters or digits
        per_value = np.array(["".join(sorted(v)) if len(v) >= 4 else None for v in fld.values], dtype=object)
    elif key == "day_month":  # dates with a typo in the year
        per_value = np.array([v[4:] for v in fld.values], dtype=object)
    elif key == "swapped":  # dates with day and month transposed
        per_value = np.array([v[:4] + "".join(sorted((v[4:6], v[6:]))) for v in fld.values], dtype=object)
    else:
        raise ValueError(key)
    value_codes, _ = factorize_texts(per_value)
    value_codes = np.append(value_codes, -1)  # a missing record (-1) indexes the appended -1
    return value_codes[fld.codes]


BLOCKING_KEYS = {
    "name": ("value", "phonetic"),
    "text": ("value", "first_token", "phonetic"),
    "id": ("value", "sorted"),
    "date": ("value", "day_month", "swapped"),
    "email": ("value", "local_part"),
    "phone": ("value", "sorted"),
}


MAX_PASSES_PER_FIELD = max(map(len, BLOCKING_KEYS.values()))


def _blocks(codes: np.ndarray, max_block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by key, and the start and size of each block worth comparing."""
    rows = np.flatnonzero(codes >= 0)
    if len(rows) < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    order = rows[np.argsort(codes[rows], kind="stable")]
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    keep = (sizes >= 2) & (sizes <= max_block_size)
    return order, starts[keep], sizes[keep]


def blocking_passes(fields: list[Field]) -> list[tuple[Field, str]]:
    return [(fld, key) for fld in fields for key in BLOCKING_KEYS[fld.kind]]


def estimate_pairs(fields: list[Field], max_block_size: int) -> int:
    """Pairs the blocking passes would produce, counting a pair once per pass that finds it:
    an upper bound on the pairs compared, cheap enough to decide before running."""
    total = 0
    for fld, key in blocking_passes(fields):
        _, _, sizes = _blocks(_key_codes(fld, key), max_block_size)
        total += int((sizes * (sizes - 1) // 2).sum())
    return total


CACHED_TRIANGLES_UP_TO = 128  # members; larger triangles (up to 12.5M pairs) are not kept between runs


def _upper_triangle(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The index pairs (i, j), i < j, of `size` members: cached for the small sizes met again and again."""
    return _cached_upper_triangle(size) if size <= CACHED_TRIANGLES_UP_TO else np.triu_indices(size, 1)


@lru_cache(maxsize=CACHED_TRIANGLES_UP_TO)
def _cached_upper_triangle(size: int) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.triu_indices(size, 1)
    first.flags.writeable = second.flags.writeable = False  # shared between calls
    return first, second


def pairs_of(members: np.ndarray) -> np.ndarray:
    """Every pair of the (sorted) members, as (left, right) rows with left < right."""
    first, second = _upper_triangle(len(members))
    return np.stack([members[first], members[second]], axis=1)


def _pairs_within(order: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Every pair of rows sharing a block, as (left, right) with left < right."""
    chunks = []
    for size in np.unique(sizes):
        first, second = _upper_triangle(int(size))
        block_starts = starts[sizes == size][:, None]
        left, right = order[block_starts + first], order[block_starts + second]
        chunks.append(np.stack([np.minimum(left, right).ravel(), np.maximum(left, right).ravel()], axis=1))
    return np.concatenate(chunks) if chunks else np.empty((0, 2), dtype=np.int64)


def candidate_pairs(fields: list[Field], records: int, max_block_size: int) -> np.ndarray:
    """The distinct pairs worth comparing, sorted: pairs that share a block in some pass and that
    share a key (of any pass, in a block of any size) in at least MIN_SHARED_FIELDS fields — or,
    where the two records fill fewer fields, in all but one of the fields both fill (never fewer
    than one) — or that hold the same value of an identifying field (one whose distinct values are
    at least IDENTIFYING_SHARE of its filled records: an e-mail, an id). A typo in one field thus
    loses no pair, and the same e-mail under a nickname, a new phone and a new city is still
    compared, while pairs alike in one common field only (the same first name, the same postcode),
    which cannot outweigh their disagreement everywhere else, are not compared at all."""
    codes = [(fld, [_key_codes(fld, key) for key in BLOCKING_KEYS[fld.kind]]) for fld in fields]
    found = [_pairs_within(*_blocks(key_codes, max_block_size)) for _, per_key in codes for key_codes in per_key]
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    keys = _distinct(pairs[:, 0] * records + pairs[:, 1])
    left, right = keys // records, keys % records
    shared = np.zeros(len(keys), dtype=np.int64)
    filled = np.zeros(len(keys), dtype=np.int64)
    identified = np.zeros(len(keys), dtype=bool)
    for fld, per_key in codes:
        filled += (fld.codes[left] >= 0) & (fld.codes[right] >= 0)
        alike = np.zeros(len(keys), dtype=bool)
        for key_codes in per_key:
            a = key_codes[left]
            alike |= (a >= 0) & (a == key_codes[right])
        shared += alike
        if len(fld.values) >= IDENTIFYING_SHARE * fld.filled:
            a = fld.codes[left]
            identified |= (a >= 0) & (a == fld.codes[right])
    keep = identified | (shared >= np.maximum(1, np.minimum(MIN_SHARED_FIELDS, filled - 1)))
    return np.stack([left[keep], right[keep]], axis=1)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct integers: `np.unique` by sorting (numpy 2's default hash-based
    `np.unique` is 50 times slower on a million int64)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


# --- comparison -----------------------------------------------------------------------------------


def _levels(kind: str, left: np.ndarray, right: np.ndarray, fld: Field, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """The level of distinct, unequal value pairs (left[i] != right[i]): 0, 1 or 2."""
    level = np.zeros(len(left), dtype=np.int8)
    if not len(left):
        return level
    if kind == "name":
        jw = cpdist(left, right, scorer=JaroWinkler.normalized_similarity, workers=-1)
        same_sound = fld.aux[li] == fld.aux[ri]
        level[(jw >= 0.8) | same_sound] = 1
        level[jw >= 0.92] = 2
    elif kind == "text":
        tokens = cpdist(left, right, scorer=fuzz.token_set_ratio, workers=-1) / 100
        jw = cpdist(left, right, scorer=JaroWinkler.normalized_similarity, workers=-1)
        level[(tokens >= 0.75) | (jw >= 0.88)] = 1
        level[(tokens >= 0.9) | (jw >= 0.95)] = 2
    elif kind in ("id", "phone"):
        edits = cpdist(left, right, scorer=OSA.distance, workers=-1)
        longest = np.maximum(fld.lengths[li], fld.lengths[ri])
        level[(edits == 2) & (longest >= 6)] = 1
        level[(edits == 1) & (longest >= 3)] = 2  # one typo or two transposed digits, in a real id
    elif kind == "date":
        a, b = fld.digits[li], fld.digits[ri]  # value pairs × 8 character codes: YYYYMMDD
        year = (a[:, :4] == b[:, :4]).all(axis=1)
        month, day = (a[:, 4:6] == b[:, 4:6]).all(axis=1), (a[:, 6:] == b[:, 6:]).all(axis=1)
        agree = year.astype(int) + month + day
        swapped = year & (a[:, 4:6] == b[:, 6:]).all(axis=1) & (a[:, 6:] == b[:, 4:6]).all(axis=1)
        edits = cpdist(left, right, scorer=OSA.distance, workers=-1)
        level[agree >= 2] = 1
        level[swapped | (edits == 1)] = 2
    elif kind == "email":
        jw = cpdist(left, right, scorer=JaroWinkler.normalized_similarity, workers=-1)
        level[(fld.aux[li] == fld.aux[ri]) | (jw >= 0.88)] = 1
        level[jw >= 0.95] = 2
    else:
        raise ValueError(kind)
    return level


def _digits(values: np.ndarray) -> np.ndarray:
    return values.astype("U8").view(np.uint32).reshape(-1, 8)


def compare(fields: list[Field], pairs: np.ndarray) -> np.ndarray:
    """The comparison vectors of record pairs: (pairs × fields) levels, -1 where missing."""
    gamma = np.full((len(pairs), len(fields)), -1, dtype=np.int8)
    for column, fld in enumerate(fields):
        left, right = fld.codes[pairs[:, 0]], fld.codes[pairs[:, 1]]
        both = (left >= 0) & (right >= 0)
        equal = both & (left == right)
        gamma[both, column] = 0
        gamma[equal, column] = EXACT
        unequal = np.flatnonzero(both & ~equal)
        if not len(unequal):
            continue
        lo, hi = np.minimum(left[unequal], right[unequal]), np.maximum(left[unequal], right[unequal])
        back, distinct = pd.factorize(lo * len(fld.values) + hi)  # hashing: no sort needed
        li, ri = distinct // len(fld.values), distinct % len(fld.values)
        gamma[unequal, column] = _levels(fld.kind, fld.values[li], fld.values[ri], fld, li, ri)[back]
    return gamma


# --- weights --------------------------------------------------------------------------------------


@dataclass
class Model:
    """Fellegi–Sunter parameters: per field and level, log2 m and log2 u; the match prior."""

    log_m: np.ndarray  # fields × 4
    log_u: np.ndarray
    prior: float  # share of matches among candidate pairs
    iterations: int
    exact_value_log_u: list[np.ndarray]  # per field, per distinct value: log2 P(both hold it | unrelated)

    def bits(self) -> np.ndarray:
        return self.log_m - self.log_u


def _random_pairs(records: int, wanted: int, seed: int = 0) -> np.ndarray:
    total = records * (records - 1) // 2
    if total <= wanted:
        left, right = np.triu_indices(records, 1)
        return np.stack([left, right], axis=1)
    rng = np.random.default_rng(seed)
    left = rng.integers(0, records, wanted)
    right = rng.integers(0, records - 1, wanted)
    right = right + (right >= left)  # never a record with itself
    return np.stack([np.minimum(left, right), np.maximum(left, right)], axis=1)


def estimate_u(fields: list[Field], records: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """log2 u per field and level: exact agreement from the value frequencies (exact for every
    pair, not a sample), the other levels from random pairs; with the kind's prior mixed in."""
    sample = _random_pairs(records, U_SAMPLE_PAIRS)
    gamma = compare(fields, sample)
    log_u = np.zeros((len(fields), 4))
    exact_value = []
    for column, fld in enumerate(fields):
        filled = fld.filled
        pairs_filled = filled * (filled - 1) / 2
        exact = float((fld.counts * (fld.counts - 1) / 2).sum() / pairs_filled) if pairs_filled else 0.0
        seen = gamma[:, column]
        others = np.bincount(seen[(seen >= 0) & (seen < EXACT)], minlength=3)[:3].astype(float)
        shares = others / others.sum() * (1 - exact) if others.sum() else np.array([1 - exact, 0, 0])
        observed = np.append(shares, exact)
        weight = min(pairs_filled, float((seen >= 0).sum()) + pairs_filled * (others.sum() == 0))
        prior = np.array(U_PRIOR[fld.kind])
        u = (weight * observed + U_PSEUDO_PAIRS * prior) / (weight + U_PSEUDO_PAIRS)
        log_u[column] = np.log2(u)
        # Term frequencies: two unrelated records both holding value v has probability ~ p_v²,
        # and a true match holding it ~ p_v: agreeing on v is worth m/p_v, not m/Σp².
        p = np.maximum(fld.counts / max(filled, 1), 1 / max(filled, 1))
        share = (weight * p + U_PSEUDO_PAIRS * prior[EXACT]) / (weight + U_PSEUDO_PAIRS)
        exact_value.append(np.log2(share))
    return log_u, exact_value


def _unique_rows(gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct comparison vectors, how often each occurs, and each pair's pattern index."""
    if gamma.shape[1] <= 27:  # 5 states per field fit in an int64 key
        keys = ((gamma.astype(np.int64) + 1) * (5 ** np.arange(gamma.shape[1], dtype=np.int64))).sum(axis=1)
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        return gamma[first], counts, inverse
    patterns, inverse, counts = np.unique(gamma, axis=0, return_inverse=True, return_counts=True)
    return patterns, counts, inverse.ravel()


def _evidence(patterns: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Σ over fields of log2(m/u) at each pattern's level (missing fields add nothing)."""
    present = patterns >= 0
    per_field = np.take_along_axis(bits.T, np.where(present, patterns, 0).astype(np.int64), axis=0)
    return np.where(present, per_field, 0.0).sum(axis=1)


def _sigmoid2(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp2(-np.clip(x, -60, 60)))


def estimate_model(fields: list[Field], gamma: np.ndarray, records: int) -> Model:
    """u measured on the data; m and the prior by expectation–maximisation over the candidate pairs."""
    log_u, exact_value = estimate_u(fields, records)
    patterns, counts, _ = _unique_rows(gamma)
    m = np.tile(np.array(M_PRIOR), (len(fields), 1))
    u_random = np.exp2(log_u)
    u, prior, iterations = u_random, PRIOR_MATCH_SHARE, 0
    present = [(patterns[:, f][:, None] == np.arange(4)[None, :]) for f in range(len(fields))]
    while iterations < EM_MAX_ITERATIONS:
        iterations += 1
        evidence = _evidence(patterns, np.log2(m) - np.log2(u))
        p = _sigmoid2(math.log2(prior / (1 - prior)) + evidence)
        weighted, unweighted = counts * p, counts * (1 - p)
        new_m = np.array([weighted @ present[f] for f in range(len(fields))])  # fields × 4
        new_m = (new_m + M_PSEUDO_PAIRS * np.array(M_PRIOR)) / (new_m.sum(axis=1, keepdims=True) + M_PSEUDO_PAIRS)
        # u of the candidate pairs' non-matches: blocking makes them agree more than random pairs do.
        new_u = np.array([unweighted @ present[f] for f in range(len(fields))])
        new_u = (new_u + U_PSEUDO_PAIRS * u_random) / (new_u.sum(axis=1, keepdims=True) + U_PSEUDO_PAIRS)
        new_prior = (weighted.sum() + PRIOR_PSEUDO_PAIRS * PRIOR_MATCH_SHARE) / (counts.sum() + PRIOR_PSEUDO_PAIRS)
        new_prior = float(min(max(new_prior, 1e-9), MAX_MATCH_SHARE))
        change = max(float(np.abs(new_m - m).max()), float(np.abs(new_u - u).max()), abs(new_prior - prior))
        m, u, prior = new_m, new_u, new_prior
        if change < EM_TOLERANCE:
            break
    # Term-frequency adjustment stays relative to the learned exact-agreement u.
    shift = np.log2(u[:, EXACT]) - log_u[:, EXACT]
    exact_value = [values + shift[f] for f, values in enumerate(exact_value)]
    log_u = np.log2(u)
    return Model(np.log2(m), log_u, prior, iterations, exact_value)


def _contribution(model: Model, fld: Field, column: int, pairs: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """One field's evidence in bits for each pair (unweighted; 0 where missing)."""
    contribution = model.bits()[column][np.maximum(levels, 0)]
    exact = levels == EXACT
    if exact.any():  # exact agreement on a rare value weighs more
        codes = fld.codes[pairs[exact, 0]]
        contribution[exact] = model.log_m[column, EXACT] - model.exact_value_log_u[column][codes]
    contribution[levels < 0] = 0.0
    return contribution


def field_bits(model: Model, fields: list[Field], pairs: np.ndarray, gamma: np.ndarray, weights: np.ndarray):
    """Each pair's evidence per field in bits (weighted; 0 where missing): for explanations."""
    columns = [_contribution(model, fld, c, pairs, gamma[:, c]) for c, fld in enumerate(fields)]
    return np.stack(columns, axis=1) * weights


def log_odds(model: Model, fields: list[Field], pairs: np.ndarray, gamma: np.ndarray, weights: np.ndarray):
    """Each pair's log2 odds of being a match: the prior plus every field's evidence; one field at
    a time, so that memory grows by a vector, not a pairs × fields matrix of floats."""
    total = np.full(len(pairs), math.log2(model.prior / (1 - model.prior)))
    for column, fld in enumerate(fields):
        total += _contribution(model, fld, column, pairs, gamma[:, column]) * weights[column]
    return total


# --- clusters -------------------------------------------------------------------------------------


def bounded_components(records: int, pairs: np.ndarray, log_odds: np.ndarray, threshold_bits: float) -> list:
    """Linked components of at most COMPLETE_COMPONENTS_UP_TO records: a larger one is split by
    linking it again with a stricter threshold (4 bits more each time, up to 10 times)."""
    done, pending = [], []
    for members in components(records, pairs[log_odds >= threshold_bits]):
        (done if len(members) <= COMPLETE_COMPONENTS_UP_TO else pending).append(members)
    for step in range(1, 11):
        if not pending:
            break
        inside = np.isin(pairs[:, 0], np.concatenate(pending))
        strong = inside & (log_odds >= threshold_bits + 4 * step)
        pending = []
        for members in components(records, pairs[strong]):
            (done if len(members) <= COMPLETE_COMPONENTS_UP_TO or step == 10 else pending).append(members)
    return done + pending


def components(records: int, links: np.ndarray) -> list[np.ndarray]:
    """Connected components (of two or more records) of the linked pairs."""
    parent = np.arange(records)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in links.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(x) for x in range(records)]) if len(links) else parent
    linked = _distinct(links.ravel())
    groups: dict[int, list[int]] = {}
    for row in linked.tolist():
        groups.setdefault(int(roots[row]), []).append(row)
    return [np.array(sorted(members)) for members in groups.values() if len(members) >= 2]


def average_linkage(members: np.ndarray, log_odds: dict[tuple[int, int], float], threshold_bits: float) -> list:
    """Split one linked component: start from single records, repeatedly merge the two clusters
    whose pairs average the most evidence, while that average reaches the threshold. Pairs never
    scored (in components too large to score whole) do not count. O(k³) for k members."""
    k = len(members)
    if k == 2:  # a component of two is one link that reached the threshold
        return [[int(m) for m in members]]
    rows = [int(m) for m in members]
    first, second = _upper_triangle(k)
    scores = [log_odds.get((rows[i], rows[j])) for i, j in zip(first.tolist(), second.tolist(), strict=True)]
    if None not in scores and min(scores) >= threshold_bits:  # every average reaches it: all merge
        return [rows]
    known = np.array([score is not None for score in scores])
    total, count = np.zeros((k, k)), np.zeros((k, k))
    total[first[known], second[known]] = [score for score in scores if score is not None]
    count[first[known], second[known]] = 1
    total, count = total + total.T, count + count.T
    groups = [[int(m)] for m in members]
    alive = np.ones(k, dtype=bool)
    while True:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        mean[~alive, :] = -np.inf
        mean[:, ~alive] = -np.inf
        np.fill_diagonal(mean, -np.inf)
        i, j = np.unravel_index(np.argmax(mean), mean.shape)
        if mean[i, j] < threshold_bits:
            break
        total[i, :] += total[j, :]
        total[:, i] += total[:, j]
        count[i, :] += count[j, :]
        count[:, i] += count[:, j]
        total[i, i] = count[i, i] = 0
        alive[j] = False
        groups[i] = sorted(groups[i] + groups[j])
    return [groups[i] for i in np.flatnonzero(alive) if len(groups[i]) >= 2]
