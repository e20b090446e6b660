from flarestream.cli import main

raise SystemExit(main())
