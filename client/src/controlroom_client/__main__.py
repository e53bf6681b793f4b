"""python -m controlroom_client SLUG: the same as the controlroom-token command."""

from controlroom_client.cli import main

raise SystemExit(main())
