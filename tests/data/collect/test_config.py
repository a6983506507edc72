"""CollectConfig refuses settings that cannot work."""

from __future__ import annotations

import pytest

from carid.data.collect import CollectConfig


def test_collect_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="workers"):
        CollectConfig(workers=0)
    with pytest.raises(ValueError, match="retries"):
        CollectConfig(retries=-1)
    with pytest.raises(ValueError, match="formats"):
        CollectConfig(formats=())
