"""The drivers index image (identity.index_image): a run reads it instead of the database only when it
is the current index's, it is the index the database gives, and nothing wrong with it fails a run."""

import numpy as np
import pytest
from django.utils import timezone

from identity import candidates, index_image
from identity.candidates import IndexFrame
from identity.index import drivers_index_refresh
from identity.models import Driver
from identity.resolution import MatchContext, leads_decide_frame, leads_load
from identity.tests.factories import make_driver, make_lead


@pytest.fixture
def images(settings, tmp_path):
    """This database's image folder (CT4_INDEX_IMAGE_DIR / the database's own folder)."""
    settings.CT4_INDEX_IMAGE_DIR = str(tmp_path / "images")
    folder = index_image.image_dir()
    assert folder.parent == tmp_path / "images"
    return folder


@pytest.fixture
def park(db):
    make_driver(driver_id="D1", first_name="Juan Carlos", last_name="Quispe Mamani", phone="951234567",
                document="44556677")
    make_driver(driver_id="D2", first_name="Rosa", last_name="Quispe Mamani", phone="951234567", email="")
    make_driver(driver_id="D3", first_name="Wilmer", last_name="Ccahuana Huillca", document="11223344")
    make_driver(driver_id="D4", first_name="Wilmer", last_name="Ccahuana Huillca", document="11223344",
                plate="ABC123")  # the same person as D3: two records of one person
    # Only the keys each case names: the factory's own numbers are sequential, so a default document
    # could fall one typo off a driver's, and which one depends on how many rows earlier tests made.
    none = {"phone": None, "document": None, "email": None, "birth_date": None}
    make_lead(**{**none, "phone": "951 234 567"}, external_id="A", first_name="Juan Carlos", last_name="Quispe Mamani")
    make_lead(**{**none, "document": "11223344"}, external_id="C", first_name="Wilmer", last_name="Ccahuana Huillca")


def _first_build(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        drivers_index_refresh()


def _database_read(monkeypatch) -> list:
    """Records every read of the index's rows from the database."""
    reads, read = [], candidates.frame_read
    monkeypatch.setattr(candidates, "frame_read", lambda query, *a, **k: reads.append(query) or read(query, *a, **k))
    return reads


def _assert_same_index(a: IndexFrame, b: IndexFrame) -> None:
    pa, pb = a.parts(), b.parts()
    assert pa.meta == pb.meta
    for name, frame in pa.frames.items():
        other = pb.frames[name]
        if name in ("tokens", "hires"):  # tables: their order means nothing
            frame, other = frame.sort(frame.columns), other.sort(other.columns)
        assert frame.equals(other), name
        assert frame.schema == other.schema, name
    for name, array in pa.arrays.items():
        assert np.array_equal(array, pb.arrays[name]), name


def _decisions(context: MatchContext) -> dict:
    resolved = leads_decide_frame(leads_load(), context)
    return {row["source_pk"]: (row["outcome"], row["person_key"], round(row["score"] or 0, 9))
            for row in resolved.decisions.iter_rows(named=True)}


def test_a_first_build_leaves_the_image_that_a_run_reads_instead_of_the_database(
        park, images, settings, monkeypatch, django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    version = index_image.index_version()
    assert [p.name for p in images.iterdir()] == [version]
    assert images.stat().st_mode & 0o077 == 0  # personal data: its owner's only
    assert images.parent.stat().st_mode & 0o077 == 0

    reads = _database_read(monkeypatch)
    from_image = IndexFrame.load()
    assert reads == []
    # What a first run would build comes with the image (the comparison below checks it is right).
    assert set(from_image._lookups) == set(candidates.LOOKUP_COLUMNS) and from_image._initials is not None
    with_image = _decisions(MatchContext.load(in_memory=True))

    settings.CT4_INDEX_IMAGE_DIR = ""
    from_database = IndexFrame.load()
    assert reads  # this time the rows were read
    _assert_same_index(from_image, from_database)
    assert _decisions(MatchContext.load(in_memory=True)) == with_image
    assert with_image["A"][0] == "link" and with_image["C"][0] == "link"


def test_after_a_change_the_old_image_is_never_read_and_the_run_leaves_the_new_one(
        park, images, monkeypatch, django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    old = index_image.index_version()
    Driver.objects.filter(driver_id="D1").update(phone="961234578", updated_at=timezone.now())
    drivers_index_refresh()
    new = index_image.index_version()
    assert new != old

    reads = _database_read(monkeypatch)
    index = IndexFrame.load()
    assert reads  # the image of the older index was not used
    assert "+51961234578" in index.records["phone"].to_list()
    assert [p.name for p in images.iterdir()] == [new]  # written for the next run; the old one removed
    reads.clear()
    _assert_same_index(IndexFrame.load(), index)
    assert reads == []


def test_an_index_read_from_its_image_stays_whole_after_a_newer_image_removes_its_files(
        park, images, monkeypatch, django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    old = index_image.index_version()
    reads = _database_read(monkeypatch)
    mapped = IndexFrame.load()
    assert reads == []
    # Read by mapping the image's files (not copying them): its arrays are the files' pages, read-only.
    assert isinstance(mapped.token_keys, np.memmap) and not mapped.token_keys.flags.writeable
    before = _decisions(MatchContext.of_index(mapped))

    Driver.objects.filter(driver_id="D1").update(phone="961234578", updated_at=timezone.now())
    drivers_index_refresh()
    IndexFrame.load()  # reads the changed index and leaves its image, removing the older one
    assert not (images / old).exists()
    # The removed files were unlinked, not overwritten: the mapped index still decides as it did.
    assert _decisions(MatchContext.of_index(mapped)) == before
    assert before["A"][0] == "link"


def test_an_index_changed_without_a_new_version_is_not_read_from_an_image_of_another_version(
        park, images, monkeypatch, django_capture_on_commit_callbacks):
    # An image whose own record names another version than its folder's is not trusted.
    _first_build(django_capture_on_commit_callbacks)
    version = index_image.index_version()
    meta = images / version / "meta.json"
    meta.write_text(meta.read_text().replace(version, "00000000-0000-4000-8000-000000000000"))
    reads = _database_read(monkeypatch)
    IndexFrame.load()
    assert reads


def test_a_damaged_image_means_the_database_is_read(park, images, monkeypatch, caplog,
                                                     django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    records = images / index_image.index_version() / "records.arrow"
    records.write_bytes(records.read_bytes()[:100])
    reads = _database_read(monkeypatch)
    index = IndexFrame.load()
    assert reads and index.records.height == 4
    assert "unreadable" in caplog.text


def test_an_image_of_another_format_is_not_read(park, images, monkeypatch, django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    monkeypatch.setattr(index_image, "IMAGE_FORMAT", index_image.IMAGE_FORMAT + 1)
    reads = _database_read(monkeypatch)
    IndexFrame.load()
    assert reads


def test_an_image_written_by_another_polars_is_not_read(park, images, monkeypatch,
                                                        django_capture_on_commit_callbacks):
    # Its lookups are ordered by Polars' hash, which Polars keeps stable within one version only.
    _first_build(django_capture_on_commit_callbacks)
    monkeypatch.setattr(index_image.pl, "__version__", "0.0.1")
    reads = _database_read(monkeypatch)
    IndexFrame.load()
    assert reads


def test_an_image_of_the_same_version_in_another_format_is_replaced_by_the_next_run(
        park, images, monkeypatch, django_capture_on_commit_callbacks):
    # Left by the code before an upgrade: kept, no run of this code would ever use an image of it.
    _first_build(django_capture_on_commit_callbacks)
    meta = images / index_image.index_version() / "meta.json"
    meta.write_text(meta.read_text().replace(f'"format": "{index_image._format()}"', '"format": 1'))
    reads = _database_read(monkeypatch)
    IndexFrame.load()
    assert reads
    reads.clear()
    IndexFrame.load()
    assert reads == []


def test_two_databases_on_one_machine_keep_their_own_images(park, images, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    # Another database's image (the demo's, a bench's) beside this one's, and an image of the layout
    # before one folder per database: this database's new image removes only the latter.
    other = images.parent / "ct4_other-0123456789" / "11111111-1111-4111-8111-111111111111"
    other.mkdir(parents=True)
    (other / "meta.json").write_text("{}")
    legacy = images.parent / "22222222-2222-4222-8222-222222222222"
    legacy.mkdir()
    (legacy / "meta.json").write_text("{}")
    _first_build(django_capture_on_commit_callbacks)
    assert [p.name for p in images.iterdir()] == [index_image.index_version()]
    assert other.is_dir() and not legacy.exists()
    assert sorted(p.name for p in images.parent.iterdir()) == sorted([images.name, other.parent.name])
    monkeypatch.setitem(index_image.connection.settings_dict, "NAME", "ct4_other")
    assert index_image.image_dir() != images  # another database, another folder


def test_images_off_write_nothing(park, settings, tmp_path, django_capture_on_commit_callbacks):
    settings.CT4_INDEX_IMAGE_DIR = ""
    _first_build(django_capture_on_commit_callbacks)
    IndexFrame.load()
    assert index_image.image_dir() is None
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_refuses_the_image_costs_the_run_nothing(park, settings, tmp_path, caplog,
                                                             django_capture_on_commit_callbacks):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.CT4_INDEX_IMAGE_DIR = str(blocker / "images")  # a folder that cannot be made
    _first_build(django_capture_on_commit_callbacks)
    assert index_image.index_version() is not None
    assert IndexFrame.load().records.height == 4
    assert "not staged" in caplog.text and "not written" in caplog.text


# --- The index a process keeps between runs (candidates._KEPT, CT4_INDEX_KEEP) ---------------------------


def _index_reads(reads: list) -> int:
    return sum(query.rstrip().endswith("FROM canon.drivers_index") for query in reads)  # the whole index


@pytest.fixture
def keep(settings):
    settings.CT4_INDEX_KEEP = True
    settings.CT4_IN_MEMORY_MIN_LEADS = 1000


def test_a_process_decides_its_next_run_against_the_index_it_kept_until_a_refresh_changes_it(
        park, keep, monkeypatch, django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    reads = _database_read(monkeypatch)
    assert MatchContext.for_leads(2).index is None  # nothing kept yet: a small run asks the database
    first = IndexFrame.load()
    assert _index_reads(reads) == 1
    # Kept: a second run of any size gets the same index, without a read.
    assert IndexFrame.load() is first
    assert MatchContext.for_leads(2).index is first
    assert MatchContext.for_leads(5000).index is first
    assert _index_reads(reads) == 1
    assert _decisions(MatchContext.for_leads(2)) == _decisions(MatchContext.load(in_memory=False))

    # A refresh gives the index a new version: the kept one is not used again.
    Driver.objects.filter(driver_id="D1").update(phone="961234578", updated_at=timezone.now())
    drivers_index_refresh()
    assert MatchContext.for_leads(2).index is None
    again = IndexFrame.load()
    assert again is not first and _index_reads(reads) == 2
    assert "+51961234578" in again.records["phone"].to_list()
    assert MatchContext.for_leads(2).index is again


def test_an_index_read_while_a_refresh_committed_is_not_kept(park, keep, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    _first_build(django_capture_on_commit_callbacks)
    versions = iter([index_image.index_version(), "00000000-0000-4000-8000-000000000000"])
    monkeypatch.setattr(index_image, "index_version", lambda: next(versions))
    IndexFrame.load()  # the version read after the rows is not the one before them
    assert candidates._KEPT["index"] is None


def test_with_keeping_off_every_run_reads_the_index_again(park, settings, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    settings.CT4_INDEX_KEEP = False
    _first_build(django_capture_on_commit_callbacks)
    reads = _database_read(monkeypatch)
    assert IndexFrame.load() is not IndexFrame.load()
    assert _index_reads(reads) == 2
    assert MatchContext.for_leads(2).index is None


def test_a_run_over_the_image_minimum_reads_a_current_image_and_keeps_it(
        park, keep, images, settings, monkeypatch, django_capture_on_commit_callbacks):
    settings.CT4_IN_MEMORY_IMAGE_MIN_LEADS = 10
    _first_build(django_capture_on_commit_callbacks)  # leaves the image of its version
    reads = _database_read(monkeypatch)
    assert MatchContext.for_leads(9).index is None  # under the image minimum: the database's indexes
    from_image = MatchContext.for_leads(10).index
    assert from_image is not None and _index_reads(reads) == 0  # read from the image, not the rows
    assert MatchContext.for_leads(1).index is from_image  # kept for the next runs, of any size

    # After a refresh the image is not the current index's: a small run asks the database again.
    Driver.objects.filter(driver_id="D1").update(phone="961234578", updated_at=timezone.now())
    drivers_index_refresh()
    assert not index_image.image_exists(index_image.index_version())
    assert MatchContext.for_leads(10).index is None
