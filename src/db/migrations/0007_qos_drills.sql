CREATE TABLE `drills` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`task` text NOT NULL,
	`site` text,
	`status` text NOT NULL,
	`scheduled_at` integer,
	`every_ms` integer,
	`started_at` integer,
	`finished_at` integer,
	`rto_ms` integer,
	`rpo_ms` integer,
	`detail` text DEFAULT '{}' NOT NULL,
	`requested_by` text NOT NULL,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE `tasks` ADD `targets_json` text;