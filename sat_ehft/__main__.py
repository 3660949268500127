from sat_ehft.cli import main

raise SystemExit(main())
