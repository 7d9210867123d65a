from vin.cli import main

raise SystemExit(main())
