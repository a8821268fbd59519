CREATE TABLE `checkpoints` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`task` text NOT NULL,
	`volume` text NOT NULL,
	`name` text NOT NULL,
	`seq` integer NOT NULL,
	`created_at` integer NOT NULL,
	`created_by` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `checkpoints_volume_name` ON `checkpoints` (`volume`,`name`);