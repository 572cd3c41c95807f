from fusedopt.bench.cli import main

raise SystemExit(main())
