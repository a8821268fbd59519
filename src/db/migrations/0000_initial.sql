CREATE TABLE `journal_state` (
	`id` integer PRIMARY KEY NOT NULL,
	`ring_id` text NOT NULL,
	`ring_size` integer NOT NULL,
	`tail` integer NOT NULL,
	`head` integer NOT NULL,
	`applied_pos` integer NOT NULL
);
--> statement-breakpoint
CREATE TABLE `segments` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`start_pos` integer NOT NULL,
	`end_pos` integer NOT NULL,
	`records` integer NOT NULL,
	`bytes` integer NOT NULL,
	`first_time` integer NOT NULL,
	`last_time` integer NOT NULL
);
--> statement-breakpoint
CREATE TABLE `volumes` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`agent` text NOT NULL,
	`name` text NOT NULL,
	`size` integer NOT NULL,
	`mirror_path` text NOT NULL,
	`last_seq` integer DEFAULT 0 NOT NULL,
	`applied_seq` integer DEFAULT 0 NOT NULL,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `volumes_agent_name` ON `volumes` (`agent`,`name`);