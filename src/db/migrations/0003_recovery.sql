CREATE TABLE `recoveries` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`volume` text NOT NULL,
	`source` text NOT NULL,
	`target` text NOT NULL,
	`strategy` text NOT NULL,
	`mode` text NOT NULL,
	`chunk_size` integer NOT NULL,
	`status` text NOT NULL,
	`scheduled_at` integer,
	`checkpoint` integer DEFAULT 0 NOT NULL,
	`chunks` integer DEFAULT 0 NOT NULL,
	`bytes_compared` integer DEFAULT 0 NOT NULL,
	`bytes_moved` integer DEFAULT 0 NOT NULL,
	`created_at` integer NOT NULL,
	`started_at` integer,
	`finished_at` integer,
	`error` text,
	`explanation` text,
	`force` integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
ALTER TABLE `cursor_volumes` ADD `void_up_to` integer DEFAULT 0 NOT NULL;