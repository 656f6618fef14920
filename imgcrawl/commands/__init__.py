"""imgcrawl's Scrapy commands (``COMMANDS_MODULE``): ``scrapy crawl`` with honest exit codes."""
