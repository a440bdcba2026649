"""Splink 5 (DuckDB backend) run end to end on our CSV files: the baseline our matching engine is compared with.

    .venv/bin/python bench/splink_baseline.py --data DIR [--threshold 0.999] [--max-pairs 2e6] [--memory-limit 8GB]

DIR holds drivers.csv and cabinet_leads.csv (SPEC §8) plus ground_truth.csv and drivers_truth.csv
(`generate_demo_data --out DIR`, or bench/febrl.py). Needs bench/requirements.txt (`make bench-setup`).
No database: everything happens in an in-memory DuckDB.

Phases, each timed: load both CSVs as text; clean them in DuckDB SQL (phones to digits, a Peruvian
9-digit mobile as its last 9 digits; documents as upper-case alphanumerics, a licence that is a
letter plus a DNI also yields that DNI; e-mails lower-case; plates upper-case alphanumerics; names
lower-case without accents, given names apart from surnames, the first surname apart); train a
`link_only` model (u by random sampling, the chance two random records match from deterministic
rules, m by expectation maximisation on two blocking rules, TRAINING); predict above the threshold; keep each
lead's best driver record. A lead's source_pk is COALESCE(external_id, id).

The evaluation is bench/_truth.py's, the same as bench/matching_quality.py's: a link is right when
the driver record belongs to the lead's true human; recall is over leads that show an identifier.

Cost: training is dominated by the EM pass on a name block when that block is wide (at 1M drivers / 100k
leads, given name + first surname gives 4.9M pairs: training 80 s, against 26 s on given name + both
surnames, 101k pairs, for the same precision and recall), else by u sampling (about 10 us a pair on 2 cores);
prediction by the name blocks: at 1M drivers / 100k leads, surname1 + park + given-name initial
alone yields about 48M pairs (surname1 + park alone would be about 370M), about 17 min on two
shared cores and 6.8 GB peak memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import splink.comparison_level_library as cll
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on
from splink.blocking_rule_library import CustomRule

from bench._truth import evaluate_links

DEFAULT_THRESHOLD = 0.999
DEFAULT_MAX_PAIRS = 2e6  # pairs sampled to estimate u: at 20k/5k, 5e6 gives the same links and takes 2.5x longer
SEED = 1

# --- Cleaning (DuckDB SQL). `{c}` is the raw column. ----------------------------------------
_DIGITS = "regexp_replace(coalesce({c}, ''), '[^0-9]', '', 'g')"
# A Peruvian mobile (9 digits starting with 9, maybe after +51 / 0051) keeps its last 9 digits; other
# numbers keep their digits. Fewer than 6 digits, or one digit repeated, is no phone.
_PHONE = f"""CASE
    WHEN length({_DIGITS}) < 6 OR length(replace({_DIGITS}, left({_DIGITS}, 1), '')) = 0 THEN NULL
    WHEN length({_DIGITS}) >= 9 AND substr(right({_DIGITS}, 9), 1, 1) = '9' THEN right({_DIGITS}, 9)
    ELSE {_DIGITS} END"""
_ALNUM_UPPER = "upper(regexp_replace(strip_accents(coalesce({c}, '')), '[^A-Za-z0-9]', '', 'g'))"
# "DNI 45678123" -> "45678123"; a 7-digit number lost the DNI's leading zero in a spreadsheet.
_DOC_BARE = f"regexp_replace({_ALNUM_UPPER}, '^(DNI|CE|PAS|PASAPORTE|CARNET|DOC)([0-9]{{6,}})$', '\\2')"
_DOCUMENT = f"""CASE
    WHEN length({_DOC_BARE}) < 6 OR length(replace({_DOC_BARE}, left({_DOC_BARE}, 1), '')) = 0 THEN NULL
    WHEN regexp_full_match({_DOC_BARE}, '[0-9]{{7}}') THEN '0' || {_DOC_BARE}
    ELSE {_DOC_BARE} END"""
_LICENSE_DNI = f"CASE WHEN regexp_full_match({_ALNUM_UPPER}, '[A-Z][0-9]{{8}}') THEN substr({_ALNUM_UPPER}, 2) END"
_EMAIL = ("CASE WHEN regexp_full_match(lower(trim(strip_accents({c}))), '[a-z0-9._%+-]+@[a-z0-9-]+(\\.[a-z0-9-]+)+') "
          "THEN lower(trim(strip_accents({c}))) END")
_PLATE = f"CASE WHEN length({_ALNUM_UPPER}) BETWEEN 5 AND 7 THEN {_ALNUM_UPPER} END"
_NAME = ("nullif(trim(regexp_replace(regexp_replace(lower(strip_accents(coalesce({c}, ''))), '[^a-z ]', ' ', 'g'), "
         "' +', ' ', 'g')), '')")
_DATE = "CAST(try_strptime(nullif(trim({c}), ''), '%Y-%m-%d') AS DATE)"


def _sql(template: str, column: str) -> str:
    return template.replace("{c}", column)


def _clean_select(raw: str, *, id_sql: str, document_alt_sql: str) -> str:
    """The cleaned columns every input table shares (Splink compares columns of the same name)."""
    given = f"concat_ws(' ', {_sql(_NAME, 'first_name')}, {_sql(_NAME, 'middle_name')})"
    return f"""
        WITH c AS (
            SELECT {id_sql} AS unique_id,
                   nullif({given}, '') AS given_name,
                   {_sql(_NAME, 'last_name')} AS surnames,
                   {_sql(_PHONE, 'phone')} AS phone,
                   {_sql(_DOCUMENT, 'document')} AS document_own,
                   {document_alt_sql} AS document_alt,
                   {_sql(_EMAIL, 'email')} AS email,
                   {_sql(_PLATE, 'plate')} AS plate,
                   strftime({_sql(_DATE, 'birth_date')}, '%Y-%m-%d') AS birth_date,
                   nullif(trim(park_id), '') AS park_id
            FROM {raw}
        )
        SELECT unique_id, given_name, surnames,
               split_part(surnames, ' ', 1) AS surname1,
               -- every name word, sorted: the same whichever boxes the words were typed in
               nullif(array_to_string(list_sort(list_distinct(list_filter(
                   string_split(concat_ws(' ', given_name, surnames), ' '), lambda w: w <> ''))), ' '), '')
                   AS name_words,
               phone,
               coalesce(document_own, document_alt) AS document,
               CASE WHEN document_alt <> coalesce(document_own, document_alt) THEN document_alt END AS document_alt,
               email, plate, birth_date, park_id
        FROM c
    """


def _key_comparison(column: str, *, term_frequency: bool) -> cl.CustomComparison:
    """Exact (term-frequency adjusted where a shared value says less), one edit or swap, else."""
    return cl.CustomComparison(
        output_column_name=column,
        comparison_levels=[
            cll.NullLevel(column),
            cll.ExactMatchLevel(column, term_frequency_adjustments=term_frequency),
            cll.DamerauLevenshteinLevel(column, 1),
            cll.ElseLevel(),
        ],
    )


def _document_comparison() -> cl.CustomComparison:
    # A driver's licence may carry the DNI that the document column lacks or spells otherwise.
    either = "(document_l = document_r OR document_l = document_alt_r OR document_alt_l = document_r)"
    near = ("(damerau_levenshtein(document_l, document_r) <= 1 OR damerau_levenshtein(document_l, document_alt_r) <= 1"
            " OR damerau_levenshtein(document_alt_l, document_r) <= 1)")
    return cl.CustomComparison(
        output_column_name="document",
        comparison_levels=[
            cll.NullLevel("document"),
            cll.CustomLevel(either, label_for_charts="Exact match document (or licence DNI)"),
            cll.CustomLevel(near, label_for_charts="Damerau-Levenshtein document <= 1"),
            cll.ElseLevel(),
        ],
    )


def _birth_date_comparison() -> cl.CustomComparison:
    parts = [f"substr(birth_date_{side}, {start}, {length})"
             for side in "lr" for start, length in ((1, 4), (6, 2), (9, 2))]
    y_l, m_l, d_l, y_r, m_r, d_r = parts
    one_part = f"(({y_l} = {y_r})::int + ({m_l} = {m_r})::int + ({d_l} = {d_r})::int) = 2"
    swapped = f"({y_l} = {y_r} AND {m_l} = {d_r} AND {d_l} = {m_r})"
    return cl.CustomComparison(
        output_column_name="birth_date",
        comparison_levels=[
            cll.NullLevel("birth_date"),
            cll.ExactMatchLevel("birth_date"),
            cll.CustomLevel(f"({one_part} OR {swapped})",
                            label_for_charts="One part differs, or day and month swapped"),
            cll.ElseLevel(),
        ],
    )


def _same_name_words() -> cll.CustomLevel:
    # The whole name typed in one box, or given names and surnames in each other's boxes.
    return cll.CustomLevel("name_words_l = name_words_r", label_for_charts="Same name words, other boxes")


def _given_name_comparison() -> cl.CustomComparison:
    return cl.CustomComparison(
        output_column_name="given_name",
        comparison_levels=[
            cll.NullLevel("given_name"),
            cll.ExactMatchLevel("given_name", term_frequency_adjustments=True),
            _same_name_words(),
            cll.JaroWinklerLevel("given_name", 0.92),
            cll.JaroWinklerLevel("given_name", 0.88),
            cll.ElseLevel(),
        ],
    )


def _surname_comparison() -> cl.CustomComparison:
    # Leads often give one surname where the driver record has both: the first surname alone is a level.
    return cl.CustomComparison(
        output_column_name="surnames",
        comparison_levels=[
            cll.NullLevel("surnames"),
            cll.ExactMatchLevel("surnames", term_frequency_adjustments=True),
            cll.ExactMatchLevel("surname1", term_frequency_adjustments=True).configure(
                label_for_charts="Exact match first surname"),
            _same_name_words(),
            cll.JaroWinklerLevel("surnames", 0.92),
            cll.JaroWinklerLevel("surnames", 0.88),
            cll.ElseLevel(),
        ],
    )


# Blocking rules for predictions. "wide" adds two typo-tolerant name rules (about 48M pairs at 1M
# drivers); "same" blocks as our engine does (each exact key, and given name + first surname, the
# closest Splink rule to our name-token pairs), for a side-by-side speed comparison on equal terms.
KEY_RULES = (
    block_on("phone"), block_on("document"), CustomRule("l.document = r.document_alt"),
    CustomRule("l.document_alt = r.document"), block_on("email"), block_on("plate"),
)
BLOCKING = {
    "same": (*KEY_RULES, block_on("given_name", "surname1")),
    "wide": (*KEY_RULES, block_on("given_name", "surname1"), block_on("birth_date", "substr(surname1, 1, 1)"),
             block_on("surname1", "park_id", "substr(given_name, 1, 1)")),
}


# Blocks the EM passes train on (each pass trains the comparisons its block does not use). "names": keys and
# birth date on given name + first surname (4.9M pairs at 1M seed 7: every namesake pair of a common name), names
# on the document. "narrow": keys on given name + both surnames (101k pairs there), for a user who
# wants Splink fast (the held-out run the issue quotes took 44 s end to end).
TRAINING = {
    "names": (block_on("given_name", "surname1"), block_on("document")),
    "narrow": (block_on("given_name", "surnames"), block_on("document")),
}


def settings_make(blocking: str = "wide") -> SettingsCreator:
    return SettingsCreator(
        link_type="link_only",
        unique_id_column_name="unique_id",
        comparisons=[
            _key_comparison("phone", term_frequency=True),
            _document_comparison(),
            _key_comparison("email", term_frequency=False),
            _key_comparison("plate", term_frequency=True),
            _birth_date_comparison(),
            _given_name_comparison(),
            _surname_comparison(),
        ],
        blocking_rules_to_generate_predictions=list(BLOCKING[blocking]),
        retain_intermediate_calculation_columns=False,
        retain_matching_columns=False,
    )


def splink_link(drivers_csv: Path, leads_csv: Path, *, threshold: float = DEFAULT_THRESHOLD,
                max_pairs: float = DEFAULT_MAX_PAIRS, seed: int = SEED, threads: int | None = None,
                memory_limit: str | None = None, log_level: int = logging.ERROR, blocking: str = "wide",
                training: str = "narrow") -> dict:
    """Link every lead to at most one driver record with Splink; timings, links and their probabilities.

    Returns {"seconds", "phases": {load, clean, train, predict, best_link}, "links": {lead source_pk:
    driver_id}, "probabilities": {lead source_pk: match_probability}, "pairs_above_threshold",
    "drivers", "leads", "m_u": {comparison: [(level, m, u), ...]}, "probability_two_random_records_match"}.
    """
    phases: dict[str, float] = {}
    started = time.monotonic()
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}").fetchall()
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit]).fetchall()
    # Spill files (if DuckDB needs them) under the system's temporary folder, not in the working tree.
    con.execute("SET temp_directory = ?", [str(Path(tempfile.gettempdir()) / f"ct4-splink-{os.getpid()}")]).fetchall()

    mark = time.monotonic()
    for table, path in (("drivers_raw", drivers_csv), ("leads_raw", leads_csv)):
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_csv(?, header = true, all_varchar = true)",
                    [str(path)]).fetchall()
    phases["load"] = time.monotonic() - mark

    mark = time.monotonic()
    con.execute("CREATE TABLE drivers_clean AS " + _clean_select(
        "drivers_raw", id_sql="driver_id", document_alt_sql=_sql(_LICENSE_DNI, "license_number"))).fetchall()
    lead_pk = "coalesce(nullif(trim(external_id), ''), trim(id))"
    con.execute("CREATE TABLE leads_clean AS " + _clean_select(
        "leads_raw", id_sql=lead_pk, document_alt_sql="NULL::VARCHAR")).fetchall()
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("drivers_clean", "leads_clean")}
    phases["clean"] = time.monotonic() - mark

    mark = time.monotonic()
    db_api = DuckDBAPI(connection=con)
    drivers = db_api.register("drivers_clean", dataset_display_name="drivers")
    leads = db_api.register("leads_clean", dataset_display_name="leads")
    linker = Linker([drivers, leads], settings_make(blocking), log_level=log_level)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("document"), block_on("given_name", "surnames", "birth_date")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=max_pairs, seed=seed)
    # Keys and birth date trained on name blocks; names trained on document blocks (TRAINING).
    for rule in TRAINING[training]:
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    phases["train"] = time.monotonic() - mark

    mark = time.monotonic()
    predictions = linker.inference.predict(threshold_match_probability=threshold, warning_mode="never")
    phases["predict"] = time.monotonic() - mark

    mark = time.monotonic()
    # Which side holds the lead depends on Splink's ordering of the two datasets; handle both.
    rows = con.execute(f"""
        WITH p AS (
            SELECT CASE WHEN source_dataset_l = 'leads' THEN unique_id_l ELSE unique_id_r END AS lead_pk,
                   CASE WHEN source_dataset_l = 'leads' THEN unique_id_r ELSE unique_id_l END AS driver_id,
                   match_probability, match_weight
            FROM {predictions.physical_name}
        )
        SELECT lead_pk, driver_id, match_probability FROM p
        QUALIFY row_number() OVER (PARTITION BY lead_pk ORDER BY match_weight DESC, driver_id) = 1
    """).fetchall()
    pairs = con.execute(f"SELECT count(*) FROM {predictions.physical_name}").fetchall()[0][0]
    links = {str(pk): driver for pk, driver, _ in rows}
    probabilities = {str(pk): float(p) for pk, _, p in rows}
    phases["best_link"] = time.monotonic() - mark
    seconds = time.monotonic() - started
    model = linker.misc.save_model_to_json()  # the trained settings, as a dict
    m_u = {
        comparison["output_column_name"]: [
            (level.get("label_for_charts"), level.get("m_probability"), level.get("u_probability"))
            for level in comparison["comparison_levels"] if not level.get("is_null_level")
        ]
        for comparison in model["comparisons"]
    }
    con.close()
    return {"seconds": seconds, "phases": phases, "links": links, "probabilities": probabilities,
            "pairs_above_threshold": pairs, "drivers": counts["drivers_clean"], "leads": counts["leads_clean"],
            "m_u": m_u, "probability_two_random_records_match": model["probability_two_random_records_match"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with drivers.csv, cabinet_leads.csv and truth")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="match probability to link")
    parser.add_argument("--max-pairs", type=float, default=DEFAULT_MAX_PAIRS, help="pairs sampled to estimate u")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--memory-limit", help="DuckDB memory_limit, e.g. 8GB (default: DuckDB's, 80%% of RAM)")
    parser.add_argument("--show-model", action="store_true", help="print each level's m and u")
    parser.add_argument("--blocking", choices=sorted(BLOCKING), default="wide",
                        help="prediction blocking rules: 'same' as our engine's, or 'wide' (two more name rules)")
    parser.add_argument("--training", choices=sorted(TRAINING), default="narrow",
                        help="the EM passes' blocks: 'narrow' (keys trained on given name + both surnames), or "
                             "'names' (on given name + first surname: as good, about 3 times slower to train at 1M)")
    parser.add_argument("--json-out", type=Path, help="also write the figures (no links) as JSON to this file")
    parser.add_argument("--verbose", action="store_true", help="show Splink's log (levels it could not train, ...)")
    args = parser.parse_args()
    result = splink_link(args.data / "drivers.csv", args.data / "cabinet_leads.csv", threshold=args.threshold,
                         max_pairs=args.max_pairs, threads=args.threads, memory_limit=args.memory_limit,
                         log_level=logging.INFO if args.verbose else logging.ERROR, blocking=args.blocking,
                         training=args.training)
    scored = evaluate_links(result["links"], args.data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    if args.json_out:
        figures = {k: scored[k] for k in ("precision", "recall", "links", "wrong", "true_with_identifier")}
        args.json_out.write_text(json.dumps({"seconds": result["seconds"], "phases": result["phases"],
                                             "peak_rss_mb": peak_mb, "blocking": args.blocking,
                                             "training": args.training, **figures}))
    print(f"splink {_splink_version()} (duckdb {duckdb.__version__}) on {args.data}: {result['drivers']} drivers, "
          f"{result['leads']} leads, threshold {args.threshold}, blocking {args.blocking}, training {args.training}")
    print("phases: " + "  ".join(f"{k}={v:.1f}s" for k, v in result["phases"].items())
          + f"  total={result['seconds']:.1f}s  peak_rss={peak_mb}MB  load_avg={os.getloadavg()[0]:.2f}")
    print(f"pairs above threshold={result['pairs_above_threshold']} links={scored['links']} wrong={scored['wrong']}")
    print(f"precision={scored['precision']:.5f}")
    print(f"recall(with identifier)={scored['recall']:.5f} of {scored['true_with_identifier']}")
    print(f"f1={scored['f1']:.5f}")
    if scored["names_only_recall"] is not None:
        print(f"recall(names only)={scored['names_only_recall']:.4f} of {scored['true_names_only']}")
    print("links by hard case:")
    print(f"{'case':<16}{'ok':>9}{'wrong':>9}{'unlinked':>9}")
    for case in sorted(scored["by_case"]):
        counts = scored["by_case"][case]
        print(f"{case:<16}" + "".join(f"{counts.get(c, 0):>9}" for c in ("link_ok", "link_wrong", "unlinked")))
    if args.show_model:
        print(f"  probability two random records match: {result['probability_two_random_records_match']:.3g}")
        for comparison, levels in result["m_u"].items():
            for label, m, u in levels:
                m_text, u_text = (value if value is None else f"{value:.4g}" for value in (m, u))
                print(f"  {comparison:<11} {label:<48} m={m_text} u={u_text}")


def _splink_version() -> str:
    import splink  # noqa: PLC0415 - its version only; the module imports splink's parts after sys.path

    return splink.__version__


if __name__ == "__main__":
    main()
