from iwcodec.cli import main

raise SystemExit(main())
