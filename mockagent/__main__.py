from mockagent.cli import main

raise SystemExit(main())
