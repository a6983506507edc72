"""Photo collection: download labelled images from URL lists or search plugins into class folders.

`collect` (queries -> source -> downloads) and `collect_images` (candidates -> downloads) write
``out/<label folder>/<name>.<ext>`` plus a resumable manifest; `sources` holds the `ImageSource`
plugin interface and registry, `manifest` the record formats. A run: `download` (the entry
points) reads the manifest, `plan` decides what to fetch, `engine` fetches, checks and stores
(with `config`'s limits and `web`'s URL and body helpers) and `progress` shows the bar.
See docs/collect.md.
"""

from carid.data.collect.config import DEFAULT_USER_AGENT, CollectConfig
from carid.data.collect.download import collect, collect_images
from carid.data.collect.manifest import (
    MANIFEST_NAME,
    PENDING,
    SUMMARY_NAME,
    CollectError,
    CollectSummary,
    ManifestRecord,
    Outcome,
    read_manifest,
    safe_folder_name,
    url_file_stem,
)
from carid.data.collect.sources import (
    ENTRY_POINT_GROUP,
    Candidate,
    ImageSource,
    SourceError,
    available_sources,
    get_source,
    register_source,
    search_all,
    unregister_source,
)
from carid.data.collect.web import parse_retry_after, sniff_image_format, url_problem

__all__ = [
    "DEFAULT_USER_AGENT",
    "ENTRY_POINT_GROUP",
    "MANIFEST_NAME",
    "PENDING",
    "SUMMARY_NAME",
    "Candidate",
    "CollectConfig",
    "CollectError",
    "CollectSummary",
    "ImageSource",
    "ManifestRecord",
    "Outcome",
    "SourceError",
    "available_sources",
    "collect",
    "collect_images",
    "get_source",
    "parse_retry_after",
    "read_manifest",
    "register_source",
    "safe_folder_name",
    "search_all",
    "sniff_image_format",
    "unregister_source",
    "url_file_stem",
    "url_problem",
]
