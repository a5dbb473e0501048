from moviesforyou.orchestration.cli import main

main()
