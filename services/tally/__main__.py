"""``python -m services.tally``: the tally process, configured from the environment."""

from services.common.settings import TallySettings
from services.tally.main import run

if __name__ == "__main__":
    # pydantic-settings fills every field from the environment or its default.
    run(TallySettings())  # type: ignore[call-arg]
