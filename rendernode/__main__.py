from rendernode.cli import main

raise SystemExit(main())
