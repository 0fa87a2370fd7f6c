from hsmd.cli import main

raise SystemExit(main())
